extension DashboardAssets {
    /// The page's script: polls the node's read routes every two seconds and draws what they
    /// say. Every value from the cluster goes into the page as text (`textContent`), never as
    /// markup.
    static let script = #"""
'use strict';
(() => {
  const POLL_MS = 2000;
  // Past this many snapshots the placement table (megabytes) is fetched every 10 s, not every poll.
  const BIG_TABLE = 2000, BIG_TABLE_EVERY_MS = 10000;
  const MODEL_ROWS = 12, DEAD_ROWS = 8, RECENT_S = 10;
  const COLORS = ['#58a6ff', '#c297ff', '#39c5cf', '#ff8fc6', '#d7c26a', '#9aa7ff'];
  const REASONS = ['deadline', 'no-holder', 'unreachable', 'holder-failed', 'shutdown'];
  const SVG = 'http://www.w3.org/2000/svg';

  const state = { members: null, placement: null, stats: null, placementAt: 0, lastOk: 0, failure: null, updates: 0, filter: '' };
  const $ = (id) => document.getElementById(id);

  // --- the token: `#token=...` once, then this tab's sessionStorage ---------------------------
  function takeTokenFromFragment() {
    const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (m) {
      sessionStorage.setItem('kaa.token', decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
  }
  const token = () => sessionStorage.getItem('kaa.token');

  class HTTPError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function get(path) {
    const headers = { 'Accept': 'application/json' };
    if (token()) headers['Authorization'] = 'Bearer ' + token();
    const r = await fetch(path, { headers, cache: 'no-store', signal: AbortSignal.timeout(8000) });
    if (!r.ok) {
      let message = r.status + ' ' + r.statusText;
      try { const body = await r.json(); if (body && body.error) message = body.error; } catch (_) { /* not JSON */ }
      throw new HTTPError(r.status, message);
    }
    return r.json();
  }

  // --- small helpers --------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v; else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  const group = (n) => Math.round(n).toLocaleString('en-US');

  function fmtBytes(n) {
    if (!(n > 0)) return '0 B';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)) + ' ' + units[i];
  }
  function fmtAge(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }
  function fmtRate(x) {
    if (!(x > 0)) return '0';
    return x < 10 ? x.toFixed(1) : group(x);
  }
  function fmtMs(us) {
    if (us === null || us === undefined || !isFinite(us)) return '–';
    const ms = us / 1000;
    if (ms < 1) return ms.toFixed(2) + ' ms';
    if (ms < 100) return ms.toFixed(1) + ' ms';
    if (ms < 10000) return group(ms) + ' ms';
    return (ms / 1000).toFixed(1) + ' s';
  }
  function ago(ms) { return fmtAge((Date.now() - ms) / 1000) + ' ago'; }

  // --- the stats: each node's series, summed over nodes per model ------------------------------
  // Every series ends with the second under way; charts and rates use the complete seconds.
  function complete(a) { return a.slice(0, -1); }

  /// {calls, errors, latencyWeighted (mean × calls), max}: arrays of complete seconds.
  function seriesOf(s) {
    return {
      calls: complete(s.calls), errors: complete(s.errors),
      weighted: complete(s.calls).map((c, i) => c * s.latency_mean_us[i]), max: complete(s.latency_max_us),
    };
  }
  function addInto(into, s) {
    if (!into) return { calls: s.calls.slice(), errors: s.errors.slice(), weighted: s.weighted.slice(), max: s.max.slice() };
    for (let i = 0; i < into.calls.length && i < s.calls.length; i++) {
      into.calls[i] += s.calls[i]; into.errors[i] += s.errors[i]; into.weighted[i] += s.weighted[i];
      into.max[i] = Math.max(into.max[i], s.max[i]);
    }
    return into;
  }
  /// Calls a second, error share, mean and max latency over the last RECENT_S complete seconds.
  function recent(s) {
    const n = s.calls.length, from = Math.max(0, n - RECENT_S);
    const calls = sum(s.calls.slice(from)), errors = sum(s.errors.slice(from));
    return {
      rate: calls / Math.min(RECENT_S, n || 1), calls, errors,
      mean: calls ? sum(s.weighted.slice(from)) / calls : null, max: calls ? Math.max(...s.max.slice(from)) : null,
    };
  }
  const meanLine = (s) => s.calls.map((c, i) => (c ? s.weighted[i] / c / 1000 : null));

  function digestStats(stats) {
    const byNode = new Map(), byModel = new Map();
    let cluster = null, window = 120;
    for (const report of stats.nodes) {
      const total = seriesOf(report.total);
      window = report.window_seconds;
      byNode.set(report.node, { total, report });
      cluster = addInto(cluster, total);
      for (const m of report.models) byModel.set(m.name, addInto(byModel.get(m.name), seriesOf(m)));
    }
    let deadTotal = 0;
    const reasons = Object.fromEntries(REASONS.map((r) => [r, 0]));
    let letters = [];
    for (const report of stats.nodes) {
      for (const [r, n] of Object.entries(report.dead_letters.by_reason)) { reasons[r] = (reasons[r] || 0) + n; deadTotal += n; }
      letters = letters.concat(report.dead_letters.newest);
    }
    letters.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    return { byNode, byModel, cluster, window, reasons, deadTotal, letters };
  }

  // --- charts: inline SVG lines over the window --------------------------------------------------
  // Axis labels: every tick of an axis with the decimals its top needs.
  const tick = (v, top) => (top <= 1 ? v.toFixed(2) : top <= 10 ? v.toFixed(1) : Number.isInteger(v) ? group(v) : v.toFixed(1));
  const tickRate = tick, tickMs = tick;
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }
  function chart(box, lines, { format, floor, legend }) {
    const width = Math.max(200, box.clientWidth), height = 134, left = 40, right = 6, top = 8, bottom = 18;
    box.replaceChildren();
    const s = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
    const n = Math.max(2, ...lines.map((l) => l.values.length));
    const top_ = niceMax(Math.max(floor, ...lines.flatMap((l) => l.values.filter((v) => v !== null))));
    const x = (i) => left + (i / (n - 1)) * (width - left - right);
    const y = (v) => top + (1 - v / top_) * (height - top - bottom);
    for (const f of [0, 0.5, 1]) {
      s.append(svg('line', { class: 'gridline', x1: left, x2: width - right, y1: y(top_ * f), y2: y(top_ * f) }));
      const t = svg('text', { class: 'axis', x: left - 6, y: y(top_ * f) + 4, 'text-anchor': 'end' });
      t.textContent = format(top_ * f, top_);
      s.append(t);
    }
    // One value a second, the newest at the right.
    const span = (sec) => (n >= 90 ? Math.round(sec / 60) + ' min' : Math.round(sec) + ' s');
    for (const [i, label] of [[0, '−' + span(n)], [Math.round((n - 1) / 2), '−' + span(n / 2)], [n - 1, 'now']]) {
      const t = svg('text', { class: 'axis', x: x(i), y: height - 3, 'text-anchor': i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle' });
      t.textContent = label;
      s.append(t);
    }
    for (const line of lines) {
      let d = '', pen = false;
      line.values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        d += (pen ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1);
        pen = true;
      });
      if (d) s.append(svg('path', { d, fill: 'none', stroke: line.color, 'stroke-width': 1.8, 'stroke-linejoin': 'round', 'stroke-linecap': 'round' }));
    }
    box.append(s);
    if (!lines.some((l) => l.values.some((v) => v))) box.append(el('div', { class: 'none' }, 'no calls in the last ' + fmtAge(seconds)));
    box.append(el('div', { class: 'legend' }, lines.map((l) => el('span', {}, swatch(l.color), l.name, ' ', el('b', {}, legend(l))))));
  }
  // Set through the style object: the page's content security policy allows no style attributes.
  function swatch(color) {
    const i = el('i');
    i.style.background = color;
    return i;
  }
  function spark(values, color) {
    const w = 120, h = 22, n = Math.max(2, values.length), top = Math.max(1, ...values);
    const s = svg('svg', { class: 'spark', viewBox: `0 0 ${w} ${h}` });
    const d = values.map((v, i) => (i ? 'L' : 'M') + ((i / (n - 1)) * w).toFixed(1) + ' ' + (h - 2 - (v / top) * (h - 4)).toFixed(1)).join('');
    s.append(svg('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.5 }));
    return s;
  }

  // --- drawing ---------------------------------------------------------------------------------
  function tile(id, value, sub, level, unit) {
    const t = $('tile-' + id), v = $('kpi-' + id);
    v.replaceChildren(String(value), unit ? el('small', {}, unit) : '');
    $('kpi-' + id + '-sub').textContent = sub || '';
    if (level) t.dataset.level = level; else delete t.dataset.level;
  }

  const nodeColor = new Map();
  function colorOf(name) {
    if (!nodeColor.has(name)) nodeColor.set(name, COLORS[nodeColor.size % COLORS.length]);
    return nodeColor.get(name);
  }

  function draw() {
    const members = state.members, placement = state.placement, stats = state.stats ? digestStats(state.stats) : null;
    if (!members) return;
    const me = members.members.find((m) => m.self);
    $('via').replaceChildren('seen from ', el('b', {}, me ? me.name : '?'), ' · ', me ? me.http_addr : '', me ? ' · kaa ' + me.kaa_version : '');

    // Members, sorted by name; colours follow that order so they stay put.
    const list = members.members.slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    list.forEach((m) => colorOf(m.name));
    const counted = list.filter((m) => m.status !== 'left');
    const alive = counted.filter((m) => m.status === 'alive').length;
    const dead = counted.filter((m) => m.status === 'dead').map((m) => m.name);
    const suspect = counted.filter((m) => m.status === 'suspect').map((m) => m.name);
    tile('members', alive, dead.length ? 'dead: ' + dead.join(', ') : suspect.length ? 'suspect: ' + suspect.join(', ') : 'all alive',
         dead.length ? 'bad' : suspect.length ? 'warn' : 'ok', '/ ' + counted.length);
    $('members-count').textContent = counted.length;
    const rows = list.map((m) => {
      const node = stats && stats.byNode.get(m.name), r = node ? recent(node.total) : null;
      const c = m.capacity;
      return el('tr', { 'data-member': m.name, 'data-status': m.status },
        el('td', { class: 'name' }, el('span', {}, m.name), m.self ? el('span', { class: 'self' }, 'this node') : ''),
        el('td', {}, el('span', { class: 'pill ' + m.status }, m.status)),
        el('td', { class: 'muted' }, m.zone || '–'),
        el('td', { class: 'muted' }, `${c.cores} cores · ${fmtBytes(c.memory_bytes)}` + (c.gpus ? ` · ${c.gpus} GPU` : '')),
        el('td', { class: 'muted' }, m.status === 'alive' || m.status === 'suspect' ? fmtAge(m.age_seconds) : '–'),
        el('td', { class: 'num' }, placement && placement.load ? fmtBytes(placement.load[m.name] || 0) : '–'),
        el('td', { class: 'num' }, r ? fmtRate(r.rate) : '–'),
        el('td', {}, node ? spark(node.total.calls, colorOf(m.name)) : el('span', { class: 'muted' }, m.status === 'alive' ? 'not answering' : '')));
    });
    $('members').tBodies[0].replaceChildren(...rows);

    // Placement: snapshots, replication, repairs, models.
    if (placement) {
      const snaps = placement.snapshots;
      const names = new Set(snaps.map((s) => s.name));
      tile('snapshots', group(placement.snapshots_total), `${group(names.size)} models · replication ${placement.replication}`, null);
      const under = placement.under_replicated;
      tile('under', group(under), under ? `below ${placement.replication} ready copies` : `all at ${placement.replication} ready copies`, under ? 'bad' : 'ok');
      const fetching = snaps.reduce((n, s) => n + s.holders.concat(s.others).filter((c) => c.state === 'fetching').length, 0);
      tile('repairs', group(fetching), fetching ? 'copies being fetched' : placement.settled ? 'placement settled' : 'placement settling',
           fetching ? 'info' : 'ok');
      drawModels(placement, stats);
      $('foot').textContent = `Placement table ${placement.digest.slice(0, 12)}` + (placement.digests_agree ? ', the same on every node' : ', not yet the same on every node')
        + ` · polled every ${POLL_MS / 1000} s from /kaa/v1/members, /kaa/v1/placement and /kaa/v1/stats/cluster`;
    }

    if (stats) {
      const c = stats.cluster ? recent(stats.cluster) : null;
      tile('rate', c ? fmtRate(c.rate) : '0', c && c.calls ? `${(100 * c.errors / c.calls).toFixed(c.errors ? 1 : 0)}% errors, last ${RECENT_S} s` : `last ${RECENT_S} s`,
           c && c.errors ? 'warn' : null);
      tile('latency', c && c.mean !== null ? fmtMs(c.mean) : '–', c && c.max !== null ? 'max ' + fmtMs(c.max) : 'no calls', null);
      const nodeLines = [...stats.byNode.entries()].sort().map(([name, n]) => ({ name, color: colorOf(name), values: n.total.calls, s: n.total }));
      chart($('chart-node-rate'), nodeLines, { format: tickRate, floor: 1, legend: (l) => fmtRate(recent(l.s).rate) + '/s' });
      chart($('chart-node-latency'), nodeLines.map((l) => ({ ...l, values: meanLine(l.s) })), {
        format: tickMs, floor: 0.1, legend: (l) => fmtMs(recent(l.s).mean) });
      const busiest = [...stats.byModel.entries()].map(([name, s]) => ({ name, s, calls: sum(s.calls) }))
        .filter((m) => m.calls > 0).sort((a, b) => b.calls - a.calls || (a.name < b.name ? -1 : 1)).slice(0, COLORS.length);
      const modelLines = busiest.map((m, i) => ({ name: m.name, color: COLORS[i], values: m.s.calls, s: m.s }));
      chart($('chart-model-rate'), modelLines, { format: tickRate, floor: 1, legend: (l) => fmtRate(recent(l.s).rate) + '/s' });
      chart($('chart-model-latency'), modelLines.map((l) => ({ ...l, values: meanLine(l.s) })), {
        format: tickMs, floor: 0.1, legend: (l) => fmtMs(recent(l.s).mean) });
      drawDeadLetters(stats);
    }
  }

  function drawModels(placement, stats) {
    const byName = new Map();
    for (const s of placement.snapshots) {
      if (!byName.has(s.name)) byName.set(s.name, []);
      byName.get(s.name).push(s);
    }
    const filter = state.filter.trim().toLowerCase();
    let models = [...byName.entries()].map(([name, versions]) => {
      const st = stats && stats.byModel.get(name), r = st ? recent(st) : null;
      return { name, versions: versions.sort((a, b) => b.version - a.version), r, calls: st ? sum(st.calls) : 0,
               short: versions.some((v) => !v.replicated) };
    }).filter((m) => !filter || m.name.toLowerCase().includes(filter));
    // Trouble first, then the busiest, then by name.
    models.sort((a, b) => (b.short - a.short) || (b.calls - a.calls) || (a.name < b.name ? -1 : 1));
    const total = models.length;
    models = models.slice(0, MODEL_ROWS);
    $('models-count').textContent = group(byName.size);
    const aliases = placement.aliases || {};
    const chip = (v) => el('span', {
      class: 'version', 'data-version': v.version, 'data-replicated': String(v.replicated),
      'data-holders': v.holders.map((h) => h.name).join(','),
      'data-ready': v.holders.filter((h) => h.state === 'ready').map((h) => h.name).join(','),
      title: `${v.name}@${v.version}: ${v.ready} ready of ${placement.replication}`,
    }, el('span', { class: 'v' }, 'v' + v.version), v.holders.map((h) => el('span', { class: 'holder', 'data-state': h.state, title: h.state }, h.name)));
    $('models').tBodies[0].replaceChildren(...models.map((m) => el('tr', { 'data-model': m.name, 'data-replicated': String(!m.short) },
      el('td', { class: 'name' }, m.name),
      el('td', {}, el('div', { class: 'versions' }, m.versions.map(chip))),
      el('td', {}, Object.entries(aliases[m.name] || {}).map(([a, v]) => el('span', { class: 'alias' }, `${a}→${v}`))),
      el('td', { class: 'num' }, m.r ? fmtRate(m.r.rate) : '0'),
      el('td', { class: 'num muted' }, m.r && m.r.mean !== null ? fmtMs(m.r.mean) : '–'))));
    $('models-more').textContent = total > models.length ? `showing ${models.length} of ${group(total)}: problems first, then the busiest; filter to find one` : '';
  }

  function drawDeadLetters(stats) {
    const recentCut = Date.now() - 120000;
    const newest = stats.letters[0];
    tile('dead', group(stats.deadTotal), newest ? 'newest ' + ago(newest.created_at) : 'none kept',
         stats.deadTotal === 0 ? 'ok' : newest && newest.created_at >= recentCut ? 'bad' : 'warn');
    $('dead-count').textContent = group(stats.deadTotal);
    $('dead-reasons').replaceChildren(...REASONS.map((r) => el('span', { class: 'reason', 'data-reason': r, 'data-nonzero': String(stats.reasons[r] > 0) },
      r, el('b', {}, group(stats.reasons[r] || 0)))));
    const shown = stats.letters.slice(0, DEAD_ROWS);
    $('dead-letters').tBodies[0].replaceChildren(...shown.map((d) => el('tr', { 'data-dead-letter': d.id, 'data-model': d.model },
      el('td', { class: 'muted', title: new Date(d.created_at).toISOString() }, ago(d.created_at)),
      el('td', { class: 'name' }, d.model + (d.version ? '@' + d.version : d.asked ? ':' + d.asked : '')),
      el('td', {}, el('span', { class: 'tag', title: d.message }, d.reason)),
      el('td', { class: 'muted' }, d.accepted_by),
      el('td', {}, el('a', { href: '/kaa/v1/deadletters/' + encodeURIComponent(d.id), 'data-record': d.id }, d.id.slice(-8).toLowerCase() + ' json')))));
    $('dead-letters').hidden = shown.length === 0;
    $('dead-empty').hidden = shown.length > 0;
  }

  function drawLiveness() {
    const live = $('live'), text = $('live-text'), banner = $('banner');
    if (state.failure && (state.failure.status === 401 || state.failure.status === 403)) {
      live.dataset.state = 'stale';
      text.textContent = 'needs a token';
      return;
    }
    if (state.failure) {
      live.dataset.state = 'stale';
      text.textContent = state.lastOk ? 'no answer for ' + fmtAge((Date.now() - state.lastOk) / 1000) : 'no answer';
      banner.hidden = false;
      banner.textContent = 'The node does not answer: ' + state.failure.message + '. Showing what it said last; retrying every ' + POLL_MS / 1000 + ' s.';
      return;
    }
    banner.hidden = true;
    if (state.stats && state.stats.unreachable.length) {
      banner.hidden = false;
      banner.textContent = 'No stats from ' + state.stats.unreachable.join(', ') + ': their request series are missing below.';
    }
    live.dataset.state = state.lastOk ? 'live' : 'connecting';
    text.textContent = state.lastOk ? 'live · updated ' + new Date(state.lastOk).toLocaleTimeString('en-GB') : 'connecting';
    $('token-button').hidden = !token();
  }

  // --- polling ---------------------------------------------------------------------------------
  async function poll() {
    try {
      const wantPlacement = !state.placement || state.placement.snapshots_total <= BIG_TABLE || Date.now() - state.placementAt >= BIG_TABLE_EVERY_MS;
      const [members, stats, placement] = await Promise.all([
        get('/kaa/v1/members'), get('/kaa/v1/stats/cluster?models=10'), wantPlacement ? get('/kaa/v1/placement') : Promise.resolve(null)]);
      state.members = members;
      state.stats = stats;
      if (placement) { state.placement = placement; state.placementAt = Date.now(); }
      state.failure = null;
      state.lastOk = Date.now();
      $('token-dialog').hidden = true;
      draw();
      state.updates += 1;
      document.body.dataset.updates = String(state.updates);
    } catch (e) {
      state.failure = { status: e.status || 0, message: e.message || String(e) };
      if (e.status === 401 || e.status === 403) askForToken(e.message);
    }
    drawLiveness();
    setTimeout(poll, POLL_MS);
  }

  function askForToken(why) {
    const dialog = $('token-dialog');
    if (!dialog.hidden) return;
    $('token-why').textContent = why + ' — paste a token with the read scope (kaa tokens create --scope read); it is kept in this tab only.';
    dialog.hidden = false;
    $('token-input').value = '';
    $('token-input').focus();
  }

  async function showRecord(id) {
    $('record-title').textContent = 'dead letter ' + id;
    $('record-body').textContent = 'loading…';
    $('record-dialog').hidden = false;
    try {
      $('record-body').textContent = JSON.stringify(await get('/kaa/v1/deadletters/' + encodeURIComponent(id)), null, 2);
    } catch (e) {
      $('record-body').textContent = 'could not read it: ' + e.message;
    }
  }

  function start() {
    takeTokenFromFragment();
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token-input').value.trim();
      if (!value) return;
      sessionStorage.setItem('kaa.token', value);
      $('token-dialog').hidden = true;
      state.failure = null;
    });
    $('token-button').addEventListener('click', () => askForToken('Use another token'));
    $('model-filter').addEventListener('input', (event) => { state.filter = event.target.value; draw(); });
    $('dead-letters').addEventListener('click', (event) => {
      const link = event.target.closest('a[data-record]');
      if (!link) return;
      // The record needs the token too: read it here rather than navigate.
      event.preventDefault();
      showRecord(link.dataset.record);
    });
    $('record-close').addEventListener('click', () => { $('record-dialog').hidden = true; });
    // A token pasted into the address of the open page.
    window.addEventListener('hashchange', () => { takeTokenFromFragment(); state.failure = null; });
    document.addEventListener('keydown', (event) => { if (event.key === 'Escape') $('record-dialog').hidden = true; });
    window.addEventListener('resize', () => draw());
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
"""#
}
