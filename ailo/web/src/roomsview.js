// The dashboard's inference rooms: every node with its kind (browser page or `ailo node`), the
// span it serves and the requests it served. Pure HTML from GET /v1/rooms (no TensorFlow.js).

const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

export const nodeKind = (n) => (String(n.url || '').startsWith('browser://') ? 'browser' : 'native');

/** Rows {room, node, kind, span, ready, served} for every node of every room. */
export function roomNodes(rooms) {
  const out = [];
  for (const r of rooms || []) {
    const spans = (r.plan && r.plan.spans) || [];
    for (const n of r.nodes || []) {
      const s = spans.find((x) => x.index === n.span);
      out.push({ room: r.id, node: n.node_id, kind: nodeKind(n), span: s ? s.label : null, ready: !!n.ready, alive: !!n.alive, served: n.served || 0 });
    }
  }
  return out;
}

export function roomsTable(rooms) {
  if (!Array.isArray(rooms) || !rooms.length) return 'No inference rooms.';
  const head = '<table><thead><tr><th>room</th><th>model</th><th>nodes</th><th>state</th></tr></thead><tbody>';
  const roomRows = rooms.map((r) => `<tr><td>${esc(r.id)}</td><td>${esc(r.model)}</td><td>${(r.nodes || []).filter((n) => n.alive).length} / ${esc(r.slots)}</td><td>${esc(r.state)}</td></tr>`).join('');
  const nodes = roomNodes(rooms);
  const nodeRows = nodes.map((n) => `<tr class="node-${n.kind}"><td>${esc(n.room)}</td><td><code>${esc(n.node.slice(0, 12))}</code></td><td>${n.kind}</td>` +
    `<td>${esc(n.span || '—')}</td><td>${n.ready ? '<span class="ok">ready</span>' : (n.alive ? 'loading' : '<span class="bad">down</span>')}</td><td>${n.served}</td></tr>`).join('');
  return `${head}${roomRows}</tbody></table>` + (nodes.length
    ? `<table id="room-nodes"><thead><tr><th>room</th><th>node</th><th>kind</th><th>span</th><th>state</th><th>requests served</th></tr></thead><tbody>${nodeRows}</tbody></table>` : '');
}

// Spot checks (issue 10): per room the price, the check probability and the verdict counts, then
// the latest mismatches / disputes / evictions (GET /v1/rooms/{id} -> verification).
const shortId = (a) => (a ? `${String(a).slice(0, 12)}` : '');
const alc = (units) => `${(units / 1e8).toFixed(2)} ALC`;

export function roomEvents(rooms) {
  return (Array.isArray(rooms) ? rooms : []).flatMap((r) => ((r.verification && r.verification.events) || []).map((e) => ({ room: r.id, ...e })));
}

export function roomChecksTable(rooms) {
  if (!Array.isArray(rooms) || !rooms.length) return '';
  const counts = (r) => Object.entries((r.verification && r.verification.checks) || {}).map(([k, v]) => `${esc(k)} ${v}`).join(', ') || '—';
  const rows = rooms.map((r) => `<tr><td>${esc(r.id)}</td><td>${r.price ? alc(r.price) : '—'}</td>` +
    `<td>${esc((r.verification && r.verification.p) ?? '—')}</td><td class="room-checks">${counts(r)}</td></tr>`).join('');
  const events = roomEvents(rooms);
  const evRows = events.slice(-10).reverse().map((e) => `<tr><td>${esc(e.room)}</td><td class="bad">${esc(e.status)}</td>` +
    `<td title="${esc(e.address || '')}"><code>${esc(shortId(e.node_id))}</code></td><td>${esc(e.span || '')}</td>` +
    `<td>${e.distance !== undefined && e.distance !== null ? `${esc(e.distance)} / ${esc(e.tolerance)}` : esc(e.strikes ? `${e.strikes} strikes` : '')}</td></tr>`).join('');
  return `<table id="room-checks"><thead><tr><th>room</th><th>price / request</th><th>spot-check p</th><th>verdicts</th></tr></thead><tbody>${rows}</tbody></table>` +
    (events.length ? `<table id="room-events"><thead><tr><th>room</th><th>verdict</th><th>node</th><th>span</th><th>distance / tolerance</th></tr></thead><tbody>${evRows}</tbody></table>` : '');
}
