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
