// rlmrun report: the rollouts table and the trajectories. Everything a
// model wrote reaches the page through textContent only: it is never parsed
// as markup, never a URL, never code.
(function () {
  'use strict';

  const COLLAPSED_LINES = 50;
  const CHUNK_CHARS = 1 << 20; // an expanded output grows 1 MB at a time
  const PAGE_ROWS = 200;       // table rows rendered at a time
  const HIGHLIGHT_MAX = 200000; // longer code is shown plain

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function append(parent, ...kids) {
    for (const k of kids) if (k) parent.appendChild(k);
    return parent;
  }

  // ---- data ---------------------------------------------------------------

  // The summary (a row per rollout) is read at once; the full results come
  // in gzipped blocks, inflated when a trajectory opens or a search needs
  // them, and a few are kept.
  let SUMMARY = null;
  let BLOCKS = [];
  const blockCache = new Map();
  const BLOCKS_KEPT = 8;

  function loadSummary() {
    performance.mark('rlmrun-load');
    SUMMARY = JSON.parse($('rlmrun-summary').textContent);
    BLOCKS = JSON.parse($('rlmrun-blocks').textContent);
    performance.mark('rlmrun-parsed');
  }

  async function inflate(b64) {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return JSON.parse(await new Response(stream).text());
  }

  async function block(n) {
    let b = blockCache.get(n);
    if (!b) {
      b = await inflate(BLOCKS[n]);
      blockCache.set(n, b);
      if (blockCache.size > BLOCKS_KEPT) blockCache.delete(blockCache.keys().next().value);
    }
    return b;
  }

  // detail is rollout i's full result and listing.
  async function detail(i) {
    const size = SUMMARY.block_size;
    return (await block(Math.floor(i / size)))[i % size];
  }

  // ---- text rendering -------------------------------------------------------

  // Control characters other than newline and tab are shown as escapes; ANSI
  // SGR colours become classes, other escape sequences are shown, not run.
  const ESC_RE = /\x1b\[([0-9;]*)m|[\x00-\x08\x0b-\x1f\x7f]/g;

  function ctlName(ch) {
    const c = ch.charCodeAt(0);
    if (c === 13) return '\\r';
    if (c === 27) return '\\e';
    return '\\x' + c.toString(16).padStart(2, '0');
  }

  function renderText(parent, text) {
    let cls = [];
    let last = 0;
    let m;
    const emit = (s) => {
      if (!s) return;
      if (cls.length) parent.appendChild(el('span', cls.join(' '), s));
      else parent.appendChild(document.createTextNode(s));
    };
    ESC_RE.lastIndex = 0;
    while ((m = ESC_RE.exec(text)) !== null) {
      emit(text.slice(last, m.index));
      last = ESC_RE.lastIndex;
      if (m[1] !== undefined) {
        for (const p of (m[1] || '0').split(';')) {
          const n = Number(p || 0);
          if (n === 0) cls = [];
          else if (n === 1) cls.push('ansi-bold');
          else if (n === 2) cls.push('ansi-dim');
          else if (n === 3) cls.push('ansi-italic');
          else if (n === 4) cls.push('ansi-underline');
          else if ((n >= 30 && n <= 37) || (n >= 90 && n <= 97)) cls = cls.filter((c) => !/^ansi-\d/.test(c)).concat('ansi-' + n);
          else if (n === 39) cls = cls.filter((c) => !/^ansi-\d/.test(c));
        }
      } else {
        parent.appendChild(el('span', 'ctl', ctlName(m[0])));
      }
    }
    emit(text.slice(last));
  }

  // An output: the first lines, then the rest on demand, a chunk at a time,
  // so a 16 MB output never has to be laid out at once.
  function output(text, cls) {
    const box = el('div');
    const pre = el('pre', cls || 'out');
    box.appendChild(pre);
    text = text == null ? '' : String(text);
    if (text === '') {
      pre.appendChild(el('span', 'ctl', '(empty)'));
      return box;
    }
    let shown = 0;
    let cut = 0;
    for (let i = 0, n = 0; i < text.length && n < COLLAPSED_LINES; i++) {
      if (text.charCodeAt(i) === 10) { n++; cut = i + 1; }
      if (i === text.length - 1) cut = text.length;
    }
    if (cut === 0 || cut > CHUNK_CHARS) cut = Math.min(text.length, CHUNK_CHARS);
    const lines = countLines(text);
    const more = el('button');
    const showUpTo = (end) => {
      renderText(pre, text.slice(shown, end));
      shown = end;
      if (shown >= text.length) {
        more.remove();
      } else {
        more.textContent = shown === cut && lines > COLLAPSED_LINES
          ? 'show all ' + lines + ' lines (' + size(text.length) + ')'
          : 'show ' + size(Math.min(CHUNK_CHARS, text.length - shown)) + ' more of ' + size(text.length - shown);
      }
    };
    more.addEventListener('click', () => showUpTo(Math.min(text.length, shown + CHUNK_CHARS)));
    box.appendChild(more);
    showUpTo(cut);
    return box;
  }

  function countLines(text) {
    let n = 1;
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) n++;
    if (text.endsWith('\n')) n--;
    return n;
  }

  function size(n) {
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + ' MB';
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + ' KB';
    return n + ' chars';
  }

  const KEYWORDS = {
    python: new Set('False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield print len range open'.split(' ')),
    bash: new Set('if then else elif fi for while until do done case esac in function select return local export declare readonly unset shift break continue exit echo printf read cd source'.split(' ')),
  };
  const TOKEN = {
    python: /(#[^\n]*)|("""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|[rbfuRBFU]{0,2}"(?:\\.|[^"\\\n])*"?|[rbfuRBFU]{0,2}'(?:\\.|[^'\\\n])*'?)|\b([A-Za-z_][A-Za-z0-9_]*)\b|\b(\d[\d_]*(?:\.\d+)?)\b/g,
    bash: /((?:^|(?<=[\s;|&(]))#[^\n]*)|("(?:\\.|[^"\\])*"?|'[^']*'?)|(\$\{[^}\n]*\}?|\$[A-Za-z_][A-Za-z0-9_]*|\$[0-9@#?*!$-])|\b([A-Za-z_][A-Za-z0-9_]*)\b|\b(\d+)\b/g,
  };

  function guessLanguage(code) {
    return /^\s*(def |class |import |from \w+ import|print\()|answer\[|\bprint\(/m.test(code) ? 'python' : 'bash';
  }

  function codeBlock(code, lang) {
    const pre = el('pre', 'code');
    code = code == null ? '' : String(code);
    if (code.length > HIGHLIGHT_MAX) {
      renderText(pre, code);
      return pre;
    }
    lang = lang === 'python' || lang === 'bash' ? lang : guessLanguage(code);
    const re = new RegExp(TOKEN[lang].source, 'g');
    let last = 0;
    let m;
    const plain = (s) => { if (s) renderText(pre, s); };
    while ((m = re.exec(code)) !== null) {
      if (m[0] === '') { re.lastIndex++; continue; }
      plain(code.slice(last, m.index));
      last = re.lastIndex;
      let cls = '';
      if (lang === 'python') {
        if (m[1]) cls = 'tok-com';
        else if (m[2]) cls = 'tok-str';
        else if (m[3]) cls = KEYWORDS.python.has(m[3]) ? 'tok-kw' : '';
        else if (m[4]) cls = 'tok-num';
      } else {
        if (m[1]) cls = 'tok-com';
        else if (m[2]) cls = 'tok-str';
        else if (m[3]) cls = 'tok-var';
        else if (m[4]) cls = KEYWORDS.bash.has(m[4]) ? 'tok-kw' : '';
        else if (m[5]) cls = 'tok-num';
      }
      if (cls) pre.appendChild(el('span', cls, m[0]));
      else plain(m[0]);
    }
    plain(code.slice(last));
    return pre;
  }

  function json(v) {
    if (typeof v === 'string') return v;
    try { return JSON.stringify(v, null, 2); } catch (e) { return String(v); }
  }

  function kvTable(pairs) {
    const t = el('table', 'kv');
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === '') continue;
      const tr = el('tr');
      append(tr, el('td', '', k));
      const td = el('td');
      if (v instanceof Node) td.appendChild(v);
      else td.appendChild(el('pre', 'mono', typeof v === 'object' ? json(v) : String(v)));
      tr.appendChild(td);
      t.appendChild(tr);
    }
    return t;
  }

  function statusBadge(s) { return el('span', 'status s-' + String(s).replace(/[^a-z_]/g, ''), s); }

  function fmtNum(v) {
    if (v === undefined || v === null || v === '') return '';
    const n = Number(v);
    return Number.isFinite(n) ? String(Math.round(n * 10000) / 10000) : String(v);
  }

  // ---- the table -------------------------------------------------------------

  let ROWS = [];
  let view = [];
  let rendered = 0;
  let sortKey = 'index';
  let sortDir = 1;
  let searchText = null;

  function row(s, i) {
    return {
      index: i + 1,
      pos: i,
      id: String(s[0]),
      status: String(s[1]),
      passed: !!s[2],
      reward: s[3] === null || s[3] === undefined ? null : Number(s[3]),
      turns: Number(s[4]) || 0,
      seconds: Number(s[5]) || 0,
      answer: s[6] == null ? '' : String(s[6]),
    };
  }

  function globRe(g) {
    let s = '';
    for (const ch of g) {
      if (ch === '*') s += '.*';
      else if (ch === '?') s += '.';
      else s += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    return new RegExp('^' + s + '$');
  }

  // Text search reads every rollout's answer and outputs: the first search
  // inflates the blocks one after the other, saying how far it got, and
  // keeps only the searchable text.
  let searchReady = null;
  function ensureSearchable() {
    if (!searchReady) {
      searchReady = (async () => {
        for (let n = 0; n < BLOCKS.length; n++) {
          const b = await block(n);
          b.forEach((d, j) => {
            const w = ROWS[n * SUMMARY.block_size + j];
            const r = d.result || {};
            const parts = [r.answer || ''];
            for (const t of r.turns || []) parts.push(t.output || '', t.code || '');
            w.hay = parts.join('\n').toLowerCase();
          });
          $('shown').textContent = 'reading outputs to search: ' + Math.round(100 * (n + 1) / BLOCKS.length) + '%';
        }
      })();
    }
    return searchReady;
  }

  function haystack(w) { return w.hay === undefined ? w.answer.toLowerCase() : w.hay; }

  let filterGen = 0;
  async function applyFilters() {
    const gen = ++filterGen;
    if ($('f-text').value.trim() !== '') await ensureSearchable();
    if (gen !== filterGen) return; // a newer filter runs

    const st = $('f-status').value;
    const pa = $('f-passed').value;
    const rmin = $('f-rmin').value === '' ? null : Number($('f-rmin').value);
    const rmax = $('f-rmax').value === '' ? null : Number($('f-rmax').value);
    const idg = $('f-id').value.trim();
    const idRe = idg ? globRe(idg) : null;
    searchText = $('f-text').value.trim().toLowerCase() || null;
    view = ROWS.filter((w) =>
      (!st || w.status === st) &&
      (!pa || (pa === 'yes') === w.passed) &&
      (rmin === null || (w.reward !== null && w.reward >= rmin)) &&
      (rmax === null || (w.reward !== null && w.reward <= rmax)) &&
      (!idRe || idRe.test(w.id)) &&
      (!searchText || haystack(w).includes(searchText)));
    sortView();
    $('rows').textContent = '';
    rendered = 0;
    renderMore();
    $('shown').textContent = view.length === ROWS.length
      ? ROWS.length + ' rollout(s)'
      : view.length + ' of ' + ROWS.length + ' rollout(s) match';
    document.body.dataset.filtered = String(gen); // tests wait for it
  }

  function sortView() {
    const k = sortKey;
    view.sort((a, b) => {
      let x = a[k], y = b[k];
      if (x === null) x = -Infinity;
      if (y === null) y = -Infinity;
      if (typeof x === 'boolean') { x = +x; y = +y; }
      return (x < y ? -1 : x > y ? 1 : a.index - b.index) * sortDir;
    });
    for (const th of document.querySelectorAll('#table th')) {
      th.classList.toggle('sorted-asc', th.dataset.key === k && sortDir > 0);
      th.classList.toggle('sorted-desc', th.dataset.key === k && sortDir < 0);
    }
  }

  function renderMore() {
    const body = $('rows');
    const end = Math.min(view.length, rendered + PAGE_ROWS);
    const frag = document.createDocumentFragment();
    for (let i = rendered; i < end; i++) {
      const w = view[i];
      const tr = el('tr');
      tr.dataset.id = w.id;
      const status = el('td');
      status.appendChild(statusBadge(w.status));
      append(tr,
        el('td', 'num', w.index),
        el('td', 'mono', w.id),
        status,
        el('td', w.passed ? 'ok' : 'bad', w.passed ? '✓' : '✗'),
        el('td', 'num', w.reward === null ? '' : fmtNum(w.reward)),
        el('td', 'num', w.turns),
        el('td', 'num', w.seconds.toFixed(2)),
        answerCell(w.answer));
      tr.addEventListener('click', () => { location.hash = '#rollout=' + encodeURIComponent(w.id); });
      frag.appendChild(tr);
    }
    body.appendChild(frag);
    rendered = end;
    $('more').textContent = rendered < view.length ? 'showing ' + rendered + ' of ' + view.length + ', scroll for more' : '';
  }

  function answerCell(a) {
    const td = el('td', 'answer mono');
    renderText(td, a.length > 300 ? a.slice(0, 300) + '…' : a);
    return td;
  }

  // ---- a trajectory ---------------------------------------------------------

  function section(title) {
    const s = el('section');
    s.appendChild(el('h3', '', title));
    return s;
  }

  function message(m) {
    const d = el('div', 'msg');
    d.appendChild(el('div', 'role', m.role + (m.name ? ' · ' + m.name : '')));
    if (m.content !== undefined && m.content !== null && m.content !== '') {
      d.appendChild(output(typeof m.content === 'string' ? m.content : json(m.content)));
    }
    for (const tc of m.tool_calls || []) {
      const fn = tc.function || {};
      let args = fn.arguments;
      try { args = json(JSON.parse(args)); } catch (e) { /* shown as sent */ }
      const box = el('div');
      box.appendChild(el('div', 'role', 'tool call · ' + (fn.name || '?') + (tc.id ? ' · ' + tc.id : '')));
      box.appendChild(codeBlock(String(args === undefined ? '' : args), fn.name === 'ipython' ? 'python' : undefined));
      d.appendChild(box);
    }
    return d;
  }

  function usage(u) {
    if (!u) return '';
    const p = u.prompt_tokens, c = u.completion_tokens;
    return (p || 0) + ' prompt + ' + (c || 0) + ' completion tokens';
  }

  function call(c, i) {
    const d = el('details');
    const sum = el('summary');
    let title = (i + 1) + '. ' + c.kind;
    if (c.kind === 'tool') title += ' · ' + c.tool + (c.error ? ' · error' : '');
    if (c.kind === 'sub_llm' || c.kind === 'chat') title += (c.batch !== undefined ? ' · batch ' + c.batch + ' item ' + (c.item || 0) : '') + ' · ' + (c.prompt || '').slice(0, 80).replace(/\s+/g, ' ');
    if (c.kind === 'model') title += ' · ' + (c.model || '') + ' · ' + usage(c.usage);
    sum.textContent = title;
    d.appendChild(sum);
    d.addEventListener('toggle', function fill() {
      if (!d.open || d.dataset.filled) return;
      d.dataset.filled = '1';
      if (c.kind === 'tool') {
        d.appendChild(kvTable([['args', c.args], ['kwargs', c.kwargs], ['result', c.result === undefined ? undefined : json(c.result)], ['error', c.error], ['duration', c.duration_ms !== undefined ? fmtNum(c.duration_ms) + ' ms' : undefined]]));
      } else if (c.kind === 'model') {
        d.appendChild(kvTable([['model', c.model], ['finish reason', c.finish_reason], ['usage', usage(c.usage)], ['latency', c.latency_ms !== undefined ? fmtNum(c.latency_ms) + ' ms' : undefined], ['retries', c.retries]]));
      } else {
        if (c.prompt) { d.appendChild(el('div', 'role', 'prompt')); d.appendChild(output(c.prompt)); }
        for (const m of c.messages || []) d.appendChild(message(m));
        if (c.reply !== undefined) { d.appendChild(el('div', 'role', 'reply')); d.appendChild(output(c.reply)); }
        if (c.error) d.appendChild(el('p', 'bad', c.error));
        const reqs = (c.requests || []).map((r, j) => ['request ' + (j + 1), (r.model || '') + ' · ' + usage(r.usage) + (r.latency_ms !== undefined ? ' · ' + fmtNum(r.latency_ms) + ' ms' : '')]);
        if (c.tool_calls) reqs.push(['tool calls', c.tool_calls]);
        if (reqs.length) d.appendChild(kvTable(reqs));
      }
    });
    return d;
  }

  function trajectory(d) {
    const r = d.result || {};
    const t = $('trajectory');
    t.textContent = '';
    const back = el('a', 'back', '← all rollouts');
    back.href = '#rollouts';
    t.appendChild(back);
    const head = el('div', 'traj-head');
    append(head, el('h2', 'mono', r.id), statusBadge(r.status),
      el('span', r.passed ? 'ok' : 'bad', r.passed ? 'passed' : 'did not pass'),
      r.reward !== undefined && r.reward !== null ? el('span', '', 'reward ' + fmtNum(r.reward)) : null,
      r.stop_reason ? el('span', 'ctl', 'stopped: ' + r.stop_reason) : null,
      r.model ? el('span', '', 'model ' + r.model) : null);
    t.appendChild(head);
    if (r.error) t.appendChild(append(section('Error'), output(r.error)));
    const v = r.volatile || {};
    for (const w of v.warnings || []) t.appendChild(el('p', 'warn', w));
    if (r.prompt) t.appendChild(append(section('Prompt'), output(r.prompt)));
    const ans = section('Answer' + (r.answer_ready ? '' : ' (not ready)') + (r.final_answer ? ' (final answer)' : '') + (r.answer_truncated ? ' (truncated at 1 MiB)' : ''));
    ans.appendChild(output(r.answer || ''));
    t.appendChild(ans);
    if ((r.expect || []).length) {
      const s = section('Expectations');
      const tb = el('table');
      append(tb, append(el('tr'), el('th', '', 'field'), el('th', '', 'expected'), el('th', '', 'got'), el('th', '', 'met')));
      for (const e of r.expect) append(tb, append(el('tr'), el('td', '', e.field), el('td', 'mono', e.expected), el('td', 'mono', e.got), el('td', e.met ? 'ok' : 'bad', e.met ? '✓' : '✗')));
      t.appendChild(append(s, tb));
    }
    if ((r.rewards || []).length) {
      const s = section('Rewards');
      const tb = el('table');
      append(tb, append(el('tr'), el('th', '', 'reward'), el('th', 'num', 'weight'), el('th', 'num', 'score'), el('th', '', 'detail')));
      for (const w of r.rewards) append(tb, append(el('tr'), el('td', '', w.name), el('td', 'num', fmtNum(w.weight)), el('td', 'num', fmtNum(w.score)), el('td', 'mono', w.detail || '')));
      t.appendChild(append(s, tb));
    }
    const turns = section('Turns (' + (r.turns || []).length + ')');
    (r.turns || []).forEach((turn, i) => {
      const d = el('div', 'turn');
      const h = el('div', 'turn-head');
      append(h, el('b', '', 'Turn ' + (i + 1)),
        turn.exit_code !== undefined ? el('span', turn.exit_code === 0 ? '' : 'bad', 'exit ' + turn.exit_code) : null,
        turn.event ? el('span', 'bad', turn.event) : null,
        turn.timeout ? el('span', '', 'timeout ' + turn.timeout) : null,
        v.turn_seconds && v.turn_seconds[i] !== undefined ? el('span', '', v.turn_seconds[i].toFixed(3) + ' s') : null);
      append(d, h, codeBlock(turn.code, LANG), output(turn.output));
      turns.appendChild(d);
    });
    t.appendChild(turns);
    if ((r.calls || []).length) {
      const s = section('Calls (' + r.calls.length + '): root model requests, root tools, sub-LLMs');
      r.calls.forEach((c, i) => s.appendChild(call(c, i)));
      t.appendChild(s);
    }
    if ((r.messages || []).length) {
      const s = section('Model conversation (' + r.messages.length + ' messages)');
      const d = el('details');
      d.appendChild(el('summary', '', 'show the messages as sent and received'));
      d.addEventListener('toggle', () => {
        if (d.open && !d.dataset.filled) { d.dataset.filled = '1'; for (const m of r.messages) d.appendChild(message(m)); }
      });
      t.appendChild(append(s, d));
    }
    const metrics = Object.entries(r.metrics || {});
    if (metrics.length) t.appendChild(append(section('Metrics'), kvTable(metrics)));
    if ((r.skipped || []).length) t.appendChild(append(section('Left out of the final directory'), output(r.skipped.join('\n'))));
    const facts = [['run', v.run_id], ['started', v.started_at], ['seconds', v.seconds !== undefined ? fmtNum(v.seconds) : undefined],
      ['backend', v.backend], ['attempts', v.attempts], ['infrastructure error', v.infra_error ? 'yes' : undefined],
      ['stage', v.stage_ms !== undefined ? fmtNum(v.stage_ms) + ' ms' : undefined], ['start', v.start_ms !== undefined ? fmtNum(v.start_ms) + ' ms' : undefined],
      ['worker start', v.worker_start_ms !== undefined ? fmtNum(v.worker_start_ms) + ' ms' : undefined],
      ['upload', v.upload_ms !== undefined ? fmtNum(v.upload_ms) + ' ms' : undefined], ['download', v.download_ms !== undefined ? fmtNum(v.download_ms) + ' ms' : undefined],
      ['environment', v.environment], ['retained directory', v.retained_dir]];
    t.appendChild(append(section('Run facts'), kvTable(facts)));
    const listing = d.listing;
    if (listing && listing.length) {
      const s = section('Retained directory (' + listing.length + ' entries)');
      const tb = el('table');
      for (const e of listing) append(tb, append(el('tr'), el('td', 'mono', e.path + (e.dir ? '/' : '') + (e.link ? ' (link)' : '')), el('td', 'num', e.dir ? '' : e.size)));
      t.appendChild(append(s, tb));
    }
  }

  let LANG = '';

  // ---- pages ----------------------------------------------------------------

  async function route() {
    const h = location.hash;
    const m = /^#rollout=(.*)$/.exec(h);
    const traj = $('trajectory');
    if (m && SUMMARY) {
      let id;
      try { id = decodeURIComponent(m[1]); } catch (e) { id = ''; }
      const w = ROWS.find((x) => x.id === id);
      if (w) {
        const d = await detail(w.pos);
        if (location.hash !== h) return; // another page was asked for meanwhile
        trajectory(d);
        traj.hidden = false;
        $('run-page').hidden = true;
        $('rollouts').hidden = true;
        window.scrollTo(0, 0);
        return;
      }
    }
    traj.hidden = true;
    traj.textContent = '';
    $('run-page').hidden = false;
    $('rollouts').hidden = false;
    if (h === '#rollouts') $('rollouts').scrollIntoView();
  }

  async function main() {
    try {
      loadSummary();
      if (BLOCKS.length && typeof DecompressionStream === 'undefined') throw new Error('this browser has no DecompressionStream');
    } catch (e) {
      $('shown').textContent = 'This report cannot be read here: ' + e;
      return;
    }
    LANG = SUMMARY.language || '';
    ROWS = (SUMMARY.rows || []).map(row);
    const statuses = [...new Set(ROWS.map((w) => w.status))].sort();
    for (const s of statuses) $('f-status').appendChild(el('option', '', s));
    let timer = null;
    $('filters').addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(applyFilters, 120); });
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    for (const th of document.querySelectorAll('#table th')) {
      th.addEventListener('click', () => {
        if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
        sortView();
        $('rows').textContent = '';
        rendered = 0;
        renderMore();
      });
    }
    new IntersectionObserver((es) => {
      if (es.some((e) => e.isIntersecting) && rendered < view.length) renderMore();
    }, { rootMargin: '600px' }).observe($('more'));
    await applyFilters();
    window.addEventListener('hashchange', route);
    await route();
    performance.mark('rlmrun-ready');
    document.body.dataset.ready = '1';
  }

  main();
})();
