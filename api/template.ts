// `weave report -f TEMPLATE`: a small subset of Go's text/template over the report JSON, because
// that is what Weave Net's `weave report -f` took and what its users' scripts contain:
//   {{.Router.Name}}                a path from the current value; each name matches a key of the
//                                   JSON with any case (Go's exported `Router.Name` is JSON's
//                                   `router.name`, `IPAM` is `ipam`), or an array index (.Peers.0)
//   {{.}}  {{$}}  {{$.Router.Name}} the current value; the root; a path from the root
//   {{range .Router.Peers}}{{.Nickname}} {{end}}    each element of an array (or value of a map)
//   {{if .X}}..{{else}}..{{end}}    X is set, true, non-zero, non-empty
//   {{len .X}}  {{json .X}}  {{join .X ","}}        length; JSON text; strings joined
// A value prints as its text (strings as they are, numbers, booleans; objects and arrays as JSON).
// Mistakes (unknown names, unclosed blocks) are UsageErrors that say where and what exists there.
import { UsageError } from '../lib/errors';

type Node =
  | { t: 'text'; s: string }
  | { t: 'out'; fn: string | null; path: Path; arg?: string }
  | { t: 'range'; path: Path; body: Node[]; els: Node[] }
  | { t: 'if'; path: Path; body: Node[]; els: Node[] };

interface Path { root: boolean; names: string[]; text: string }

// "{{- " and " -}}" trim the white space before and after the action, as in Go
const ACTION = /\{\{(-\s)?\s*([\s\S]*?)\s*(\s-)?\}\}/g;

function parsePath(s: string, where: string): Path {
  if (s === '.') return { root: false, names: [], text: s };
  if (s === '$') return { root: true, names: [], text: s };
  const root = s.startsWith('$.');
  const body = root ? s.slice(1) : s;
  if (!/^(\.[A-Za-z0-9_-]+)+$/.test(body)) throw new UsageError(`template: "${s}" at ${where} is not a field path such as .Router.Name`);
  return { root, names: body.slice(1).split('.'), text: s };
}

/** Parses a template; UsageError for what it cannot read. */
export function parseTemplate(src: string): Node[] {
  const tokens: Array<{ text?: string; action?: string; at: number }> = [];
  let last = 0;
  let trimNext = false;
  const text = (s: string, at: number): void => {
    const t = trimNext ? s.trimStart() : s;
    if (t) tokens.push({ text: t, at });
  };
  for (const m of src.matchAll(ACTION)) {
    if (m.index! > last) text(src.slice(last, m.index), last);
    const prev = tokens[tokens.length - 1];
    if (m[1] && prev?.text !== undefined) prev.text = prev.text.trimEnd();
    tokens.push({ action: m[2], at: m.index! });
    trimNext = !!m[3];
    last = m.index! + m[0].length;
  }
  if (last < src.length) text(src.slice(last), last);
  for (const tk of tokens) if (tk.text?.includes('{{')) throw new UsageError(`template: "{{" at offset ${tk.at + tk.text.indexOf('{{')} is not closed with "}}"`);

  let i = 0;
  const block = (inside: string | null): { body: Node[]; els: Node[]; ended: boolean } => {
    const body: Node[] = [];
    let els: Node[] | null = null;
    while (i < tokens.length) {
      const tk = tokens[i++];
      const cur = els ?? body;
      if (tk.text !== undefined) {
        cur.push({ t: 'text', s: tk.text });
        continue;
      }
      const where = `offset ${tk.at}`;
      const words = tk.action!.split(/\s+/).filter(Boolean);
      const [w0, ...rest] = words;
      if (w0 === 'end') {
        if (!inside) throw new UsageError(`template: {{end}} at ${where} closes nothing`);
        return { body, els: els ?? [], ended: true };
      }
      if (w0 === 'else') {
        if (!inside || els) throw new UsageError(`template: {{else}} at ${where} is not inside {{if}} or {{range}}`);
        els = [];
        continue;
      }
      if (w0 === 'range' || w0 === 'if') {
        if (rest.length !== 1) throw new UsageError(`template: {{${w0}}} at ${where} takes one field path`);
        const path = parsePath(rest[0], where);
        const b = block(w0);
        if (!b.ended) throw new UsageError(`template: {{${w0} ${rest[0]}}} at ${where} has no {{end}}`);
        cur.push({ t: w0, path, body: b.body, els: b.els });
        continue;
      }
      if (w0 === 'len' || w0 === 'json') {
        if (rest.length !== 1) throw new UsageError(`template: {{${w0}}} at ${where} takes one field path`);
        cur.push({ t: 'out', fn: w0, path: parsePath(rest[0], where) });
        continue;
      }
      if (w0 === 'join') {
        const m = /^join\s+(\S+)\s+"((?:[^"\\]|\\.)*)"$/.exec(tk.action!);
        if (!m) throw new UsageError(`template: {{join}} at ${where} takes a field path and a quoted separator: {{join .Router.Targets ","}}`);
        cur.push({ t: 'out', fn: 'join', path: parsePath(m[1], where), arg: JSON.parse(`"${m[2]}"`) });
        continue;
      }
      if (words.length !== 1) throw new UsageError(`template: {{${tk.action}}} at ${where}: expected a field path, or one of range, if, else, end, len, json, join`);
      cur.push({ t: 'out', fn: null, path: parsePath(w0, where) });
    }
    return { body, els: els ?? [], ended: false };
  };
  const top = block(null);
  return top.body;
}

/** Every key anywhere in the data, lowercased: a name none of them has is a typo, not an absent optional field. */
function allKeys(v: unknown, out: Set<string>, depth = 0): Set<string> {
  if (depth > 64 || v === null || typeof v !== 'object') return out;
  if (Array.isArray(v)) for (const x of v) allKeys(x, out, depth + 1);
  else for (const [k, x] of Object.entries(v)) {
    out.add(k.toLowerCase());
    allKeys(x, out, depth + 1);
  }
  return out;
}

/**
 * The value at path. A name absent here but present elsewhere in the report (an optional field, such
 * as a connection's overlayReason) gives no value, as Go's templates do on maps; a name the report has
 * nowhere is a UsageError naming what exists at that place.
 */
function lookup(root: unknown, dot: unknown, p: Path, known: Set<string>): unknown {
  let v = p.root ? root : dot;
  const walked: string[] = [];
  for (const n of p.names) {
    if (Array.isArray(v) && /^\d+$/.test(n)) {
      v = v[Number(n)];
    } else if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      const key = n in o ? n : Object.keys(o).find((k) => k.toLowerCase() === n.toLowerCase());
      if (key === undefined && known.has(n.toLowerCase())) return undefined;
      if (key === undefined) {
        const where = walked.length ? `.${walked.join('.')}` : p.root ? '$' : 'the current value';
        throw new UsageError(`template: no field "${n}" in ${where} (in ${p.text}); it has: ${Object.keys(o).join(', ') || 'nothing'}`);
      }
      v = o[key];
    } else if ((v === undefined || v === null) && known.has(n.toLowerCase())) {
      return undefined;
    } else {
      throw new UsageError(`template: ${p.text}: .${walked.join('.') || ''} is ${v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v}, it has no field "${n}"`);
    }
    walked.push(n);
  }
  return v;
}

function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v as object).length > 0;
  return true;
}

function show(v: unknown): string {
  if (v === undefined || v === null) return '<no value>';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

function run(nodes: Node[], root: unknown, dot: unknown, out: string[], known: Set<string>): void {
  for (const n of nodes) {
    switch (n.t) {
      case 'text':
        out.push(n.s);
        break;
      case 'out': {
        const v = lookup(root, dot, n.path, known);
        if (n.fn === 'len') {
          if (typeof v === 'string' || Array.isArray(v)) out.push(String(v.length));
          else if (v && typeof v === 'object') out.push(String(Object.keys(v).length));
          else throw new UsageError(`template: len ${n.path.text}: it is ${v === null ? 'null' : typeof v}, which has no length`);
        } else if (n.fn === 'json') {
          out.push(JSON.stringify(v));
        } else if (n.fn === 'join') {
          if (!Array.isArray(v)) throw new UsageError(`template: join ${n.path.text}: not a list`);
          out.push(v.map(show).join(n.arg));
        } else {
          out.push(show(v));
        }
        break;
      }
      case 'if':
        run(truthy(lookup(root, dot, n.path, known)) ? n.body : n.els, root, dot, out, known);
        break;
      case 'range': {
        const v = lookup(root, dot, n.path, known);
        const items = Array.isArray(v) ? v : v && typeof v === 'object' ? Object.values(v) : [];
        if (items.length === 0) run(n.els, root, dot, out, known);
        for (const x of items) run(n.body, root, x, out, known);
        break;
      }
    }
  }
}

/** Renders template src over data (the report). */
export function renderTemplate(src: string, data: unknown): string {
  const out: string[] = [];
  run(parseTemplate(src), data, data, out, allKeys(data, new Set()));
  return out.join('');
}
