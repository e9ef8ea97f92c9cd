extension DashboardAssets {
    /// Dark, for a wall screen: status colours mean one thing each (green healthy, amber
    /// degraded, red failed, blue in progress, grey gone); series colours avoid them.
    static let style = #"""
:root {
  --bg: #0b0f14; --panel: #121821; --panel-2: #18202b; --line: #243042; --text: #e6edf3; --muted: #8b98a9; --faint: #5b6778;
  --ok: #3fb950; --warn: #e3a93b; --bad: #f85149; --info: #58a6ff; --gone: #6e7681;
  --s0: #58a6ff; --s1: #c297ff; --s2: #39c5cf; --s3: #ff8fc6; --s4: #d7c26a; --s5: #9aa7ff;
  --mono: "DejaVu Sans Mono", ui-monospace, "SF Mono", Menlo, Consolas, monospace;
  --sans: "DejaVu Sans", "Segoe UI", system-ui, -apple-system, Helvetica, Arial, sans-serif;
}
* { box-sizing: border-box; }
html, body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.4 var(--sans); }
body { padding: 0 20px 16px; min-width: 980px; }
h2 { font-size: 13px; font-weight: 600; letter-spacing: .06em; text-transform: uppercase; color: var(--muted); margin: 0 0 10px;
     display: flex; align-items: center; gap: 8px; }
h2 .count { color: var(--faint); font-weight: 500; }
h2 .hint { color: var(--faint); font-weight: 500; text-transform: none; letter-spacing: 0; }
code { font-family: var(--mono); font-size: 12px; background: var(--panel-2); padding: 1px 4px; border-radius: 4px; }
button { font: inherit; color: var(--text); background: var(--info); border: 0; border-radius: 6px; padding: 6px 14px; cursor: pointer; }
button.ghost { background: transparent; border: 1px solid var(--line); color: var(--muted); padding: 3px 10px; font-size: 12px; }
button.ghost:hover { color: var(--text); border-color: var(--muted); }
a { color: var(--info); text-decoration: none; }
a:hover { text-decoration: underline; }

.bar { display: flex; align-items: center; gap: 20px; height: 56px; border-bottom: 1px solid var(--line); margin-bottom: 16px; }
.brand { display: flex; align-items: baseline; gap: 8px; }
.brand .mark { font: 700 22px/1 var(--mono); color: var(--text); letter-spacing: .02em; }
.brand .title { color: var(--muted); font-size: 15px; }
.via { color: var(--muted); flex: 1; font-size: 13px; }
.via b { color: var(--text); font-weight: 600; }
.live { display: flex; align-items: center; gap: 8px; color: var(--muted); font-size: 13px; }
.live .dot { width: 9px; height: 9px; border-radius: 50%; background: var(--gone); }
.live[data-state="live"] .dot { background: var(--ok); box-shadow: 0 0 0 3px rgba(63,185,80,.18); }
.live[data-state="stale"] .dot { background: var(--bad); box-shadow: 0 0 0 3px rgba(248,81,73,.2); }
.live[data-state="stale"] { color: var(--bad); }

.banner { background: rgba(248,81,73,.12); border: 1px solid rgba(248,81,73,.5); color: #ffb3ad; padding: 8px 12px; border-radius: 8px;
          margin-bottom: 14px; font-size: 13px; }

.tiles { display: grid; grid-template-columns: repeat(7, minmax(0, 1fr)); gap: 12px; margin-bottom: 16px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; border-top: 3px solid var(--line);
        min-width: 0; }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .06em; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tile .value { font: 600 30px/1.15 var(--sans); margin-top: 4px; font-variant-numeric: tabular-nums; white-space: nowrap; }
.tile .value small { font-size: 15px; color: var(--muted); font-weight: 500; margin-left: 3px; }
.tile .sub { color: var(--faint); font-size: 12px; margin-top: 2px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; min-height: 17px; }
.tile[data-level="ok"] { border-top-color: var(--ok); }
.tile[data-level="warn"] { border-top-color: var(--warn); }
.tile[data-level="warn"] .value { color: var(--warn); }
.tile[data-level="bad"] { border-top-color: var(--bad); }
.tile[data-level="bad"] .value { color: var(--bad); }
.tile[data-level="info"] { border-top-color: var(--info); }
.tile[data-level="info"] .value { color: var(--info); }

.grid { display: grid; grid-template-columns: minmax(0, 1.2fr) minmax(0, 1fr); gap: 16px; align-items: start; }
.column { display: flex; flex-direction: column; gap: 16px; min-width: 0; }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; min-width: 0; }
.panel.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 14px 20px; }
.chart-box { min-width: 0; }
.chart { height: 156px; position: relative; }
.chart svg { display: block; width: 100%; height: 134px; overflow: visible; }
.chart .legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; color: var(--muted); margin-top: 4px; height: 18px; overflow: hidden; }
.chart .legend span { display: inline-flex; align-items: center; gap: 5px; white-space: nowrap; }
.chart .legend i { width: 10px; height: 3px; border-radius: 2px; display: inline-block; }
.chart .legend b { color: var(--text); font-weight: 600; font-variant-numeric: tabular-nums; }
.chart .none { position: absolute; inset: 40px 0 auto; text-align: center; color: var(--faint); font-size: 13px; }
.axis { fill: var(--faint); font: 11px var(--sans); }
.gridline { stroke: var(--line); stroke-width: 1; }

.table { width: 100%; border-collapse: collapse; font-size: 13px; }
.table th { text-align: left; color: var(--faint); font-weight: 500; font-size: 12px; padding: 0 8px 6px; border-bottom: 1px solid var(--line);
            white-space: nowrap; }
.table td { padding: 7px 8px; border-bottom: 1px solid rgba(36,48,66,.6); vertical-align: middle; white-space: nowrap; }
.table tr:last-child td { border-bottom: 0; }
.table .num { text-align: right; font-variant-numeric: tabular-nums; }
.table td.name { font-weight: 600; max-width: 220px; overflow: hidden; text-overflow: ellipsis; }
.table td.muted, .muted { color: var(--muted); }
.table tr[data-status="dead"] td, .table tr[data-status="left"] td { color: var(--faint); }
.table tr[data-status="dead"] td.name { text-decoration: line-through; text-decoration-color: rgba(248,81,73,.6); }
.self { font-size: 10px; color: var(--info); border: 1px solid rgba(88,166,255,.5); border-radius: 4px; padding: 0 4px; margin-left: 6px;
        font-weight: 500; vertical-align: 1px; }

.pill { display: inline-flex; align-items: center; gap: 6px; font-size: 12px; font-weight: 600; padding: 2px 9px 2px 7px; border-radius: 999px;
        background: var(--panel-2); color: var(--muted); }
.pill::before { content: ""; width: 7px; height: 7px; border-radius: 50%; background: currentColor; }
.pill.alive { color: var(--ok); background: rgba(63,185,80,.12); }
.pill.suspect { color: var(--warn); background: rgba(227,169,59,.13); }
.pill.dead { color: var(--bad); background: rgba(248,81,73,.13); }
.pill.left { color: var(--gone); }

.versions { display: flex; flex-wrap: wrap; gap: 6px; }
.version { display: inline-flex; align-items: center; gap: 5px; background: var(--panel-2); border: 1px solid var(--line); border-radius: 6px;
           padding: 1px 7px 1px 6px; font-size: 12px; }
.version[data-replicated="false"] { border-color: rgba(227,169,59,.6); }
.version .v { color: var(--muted); font-family: var(--mono); margin-right: 2px; }
.holder { display: inline-flex; align-items: center; gap: 4px; color: var(--text); }
.holder::before { content: ""; width: 7px; height: 7px; border-radius: 50%; background: var(--gone); }
.holder[data-state="ready"]::before { background: var(--ok); }
.holder[data-state="fetching"]::before { background: var(--info); }
.holder[data-state="missing"]::before { background: var(--warn); }
.holder[data-state="down"]::before { background: var(--bad); }
.holder[data-state="down"] { color: var(--faint); text-decoration: line-through; }
.holder[data-state="draining"]::before { background: var(--gone); }
.alias { display: inline-block; font-size: 12px; font-family: var(--mono); color: var(--s1); background: rgba(194,151,255,.1); border-radius: 4px;
         padding: 0 5px; margin-right: 4px; }
.filter { margin-left: auto; background: var(--panel-2); border: 1px solid var(--line); color: var(--text); border-radius: 6px; padding: 3px 8px;
          font: 12px var(--sans); width: 160px; text-transform: none; letter-spacing: 0; }
.more { color: var(--faint); font-size: 12px; margin-top: 8px; }

.spark { display: block; width: 120px; height: 22px; }

.reasons { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 10px; }
.reason { display: inline-flex; align-items: baseline; gap: 8px; padding: 4px 10px; border-radius: 6px; background: var(--panel-2);
          border: 1px solid var(--line); font-size: 12px; color: var(--muted); }
.reason b { font-size: 15px; color: var(--text); font-variant-numeric: tabular-nums; }
.reason[data-nonzero="true"] { border-color: rgba(248,81,73,.55); }
.reason[data-nonzero="true"] b { color: var(--bad); }
.tag { display: inline-block; font-size: 12px; padding: 0 7px; border-radius: 4px; background: rgba(248,81,73,.12); color: #ff9d97; }
.empty { color: var(--faint); font-size: 13px; padding: 6px 8px; }

.foot { color: var(--faint); font-size: 12px; margin-top: 14px; }

.overlay { position: fixed; inset: 0; background: rgba(3,6,10,.72); display: flex; align-items: center; justify-content: center; z-index: 10; }
.overlay[hidden] { display: none; }
.dialog { background: var(--panel); border: 1px solid var(--line); border-radius: 12px; padding: 20px 22px; width: 440px; max-width: 92vw; }
.dialog.wide { width: 820px; max-height: 84vh; display: flex; flex-direction: column; }
.dialog h2 { font-size: 14px; color: var(--text); text-transform: none; letter-spacing: 0; }
.dialog p { color: var(--muted); font-size: 13px; margin: 0 0 12px; }
.dialog input { width: 100%; background: var(--bg); border: 1px solid var(--line); color: var(--text); border-radius: 6px; padding: 8px 10px;
                font: 13px var(--mono); }
.dialog .actions { display: flex; justify-content: flex-end; margin-top: 14px; }
.dialog-head { display: flex; justify-content: space-between; align-items: center; }
.dialog pre { margin: 0; overflow: auto; font: 12px/1.45 var(--mono); color: var(--text); background: var(--bg); border: 1px solid var(--line);
              border-radius: 8px; padding: 12px; white-space: pre-wrap; word-break: break-all; }
"""#
}
