/// The dashboard's page, script and style, compiled in: `GET /ui`, `/ui/dashboard.js`,
/// `/ui/dashboard.css` (``DashboardRoute``). Plain HTML, CSS and JavaScript, no library.
enum DashboardAssets {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Kaa cluster</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/dashboard.css">
<script src="/ui/dashboard.js" defer></script>
</head>
<body>
<header class="bar">
  <div class="brand"><span class="mark">kaa</span><span class="title">cluster</span></div>
  <div class="via" id="via">connecting…</div>
  <div class="live" id="live" data-state="connecting"><span class="dot"></span><span id="live-text">connecting</span></div>
  <button id="token-button" class="ghost" type="button" hidden>token</button>
</header>

<div id="banner" class="banner" hidden></div>

<section class="tiles" id="tiles">
  <div class="tile" id="tile-members"><div class="label">members alive</div><div class="value" id="kpi-members">–</div><div class="sub" id="kpi-members-sub"></div></div>
  <div class="tile" id="tile-snapshots"><div class="label">snapshots</div><div class="value" id="kpi-snapshots">–</div><div class="sub" id="kpi-snapshots-sub"></div></div>
  <div class="tile" id="tile-under"><div class="label">under-replicated</div><div class="value" id="kpi-under">–</div><div class="sub" id="kpi-under-sub"></div></div>
  <div class="tile" id="tile-repairs"><div class="label">repairs running</div><div class="value" id="kpi-repairs">–</div><div class="sub" id="kpi-repairs-sub"></div></div>
  <div class="tile" id="tile-rate"><div class="label">calls / s</div><div class="value" id="kpi-rate">–</div><div class="sub" id="kpi-rate-sub"></div></div>
  <div class="tile" id="tile-latency"><div class="label">mean latency</div><div class="value" id="kpi-latency">–</div><div class="sub" id="kpi-latency-sub"></div></div>
  <div class="tile" id="tile-dead"><div class="label">dead letters</div><div class="value" id="kpi-dead">–</div><div class="sub" id="kpi-dead-sub"></div></div>
</section>

<main class="grid">
  <div class="column">
    <section class="panel members">
      <h2>Members <span class="count" id="members-count"></span></h2>
      <table class="table" id="members">
        <thead><tr><th>node</th><th>status</th><th>zone</th><th>capacity</th><th>age</th><th class="num">holds</th><th class="num">calls/s</th><th>last 2 min</th></tr></thead>
        <tbody></tbody>
      </table>
    </section>

    <section class="panel models">
      <h2>Models <span class="count" id="models-count"></span>
        <input id="model-filter" class="filter" type="search" placeholder="filter" aria-label="filter models"></h2>
      <table class="table" id="models">
        <thead><tr><th>model</th><th>versions and holders</th><th>aliases</th><th class="num">calls/s</th><th class="num">mean</th></tr></thead>
        <tbody></tbody>
      </table>
      <div class="more" id="models-more"></div>
    </section>
  </div>

  <div class="column">
    <section class="panel charts">
      <div class="chart-box">
        <h2>Calls per second <span class="hint">by node</span></h2>
        <div class="chart" id="chart-node-rate"></div>
      </div>
      <div class="chart-box">
        <h2>Mean latency <span class="hint">by node, ms</span></h2>
        <div class="chart" id="chart-node-latency"></div>
      </div>
      <div class="chart-box">
        <h2>Calls per second <span class="hint">busiest models</span></h2>
        <div class="chart" id="chart-model-rate"></div>
      </div>
      <div class="chart-box">
        <h2>Mean latency <span class="hint">busiest models, ms</span></h2>
        <div class="chart" id="chart-model-latency"></div>
      </div>
    </section>

    <section class="panel dead">
      <h2>Dead letters <span class="count" id="dead-count"></span></h2>
      <div class="reasons" id="dead-reasons"></div>
      <table class="table" id="dead-letters">
        <thead><tr><th>when</th><th>model</th><th>reason</th><th>accepted by</th><th>record</th></tr></thead>
        <tbody></tbody>
      </table>
      <div class="empty" id="dead-empty">none kept</div>
    </section>
  </div>
</main>

<footer class="foot" id="foot"></footer>

<div id="token-dialog" class="overlay" hidden>
  <form id="token-form" class="dialog">
    <h2>This node needs a token</h2>
    <p id="token-why">Paste a token with the <code>read</code> scope (<code>kaa tokens create --scope read</code>). It is kept in this tab only.</p>
    <input id="token-input" type="password" autocomplete="off" spellcheck="false" placeholder="kaa_…" aria-label="token">
    <div class="actions"><button type="submit">use token</button></div>
  </form>
</div>

<div id="record-dialog" class="overlay" hidden>
  <div class="dialog wide">
    <div class="dialog-head"><h2 id="record-title">dead letter</h2><button id="record-close" class="ghost" type="button">close</button></div>
    <pre id="record-body"></pre>
  </div>
</div>
</body>
</html>
"""#
}
