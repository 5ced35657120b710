// The DNS wire format of the hot path: parsing one query and encoding the answers km1s gives. Hand-written
// rather than through dns2's Packet because the issue's target is ≥ 0.8× dnsmasq's queries per second:
// dns2 parses every query into objects and re-serialises every name (~65k q/s here against dnsmasq's
// ~150k), while km1s answers only A, SRV and errors and can reuse the question's bytes. Importing dns2 at
// all would also load node:http2 and node:https (+15 MB RSS per agent, measured), so dns2 is the tests'
// client and reference parser, and the server is this file on node:dgram.

export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 } as const
export const CLASS_IN = 1
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const

/** The largest query km1s reads: questions are short; anything bigger is garbage or an attack. */
export const MAX_QUERY_BYTES = 1232
const HEADER_BYTES = 12
const MAX_NAME_BYTES = 255

export interface Query {
  id: number
  /** Recursion desired, echoed in the answer. */
  rd: boolean
  /** The name in lower case without the trailing dot, labels joined by dots ('' is the root). */
  name: string
  type: number
  klass: number
  /** Offset just past the question: bytes 12..questionEnd are echoed (with the asker's letter case). */
  questionEnd: number
}

export type ParseResult =
  | { ok: true; query: Query }
  /** `drop`: not worth an answer (too short, a response, oversized); otherwise answer with this rcode. */
  | { ok: false; drop: true }
  | { ok: false; drop: false; id: number; rd: boolean; rcode: number }

/** Parses the header and the single question of a query. Never throws, whatever the bytes. */
export function parseQuery(buf: Buffer): ParseResult {
  if (buf.length < HEADER_BYTES || buf.length > MAX_QUERY_BYTES) return { ok: false, drop: true }
  const id = buf.readUInt16BE(0)
  const flags = buf[2] ?? 0
  // A response (QR set) is never answered: answering one could start a loop between two servers.
  if (flags & 0x80) return { ok: false, drop: true }
  const rd = (flags & 0x01) !== 0
  const opcode = (flags >> 3) & 0x0f
  if (opcode !== 0) return { ok: false, drop: false, id, rd, rcode: RCODE.NOTIMP }
  const qdcount = buf.readUInt16BE(4)
  if (qdcount !== 1) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR }
  const labels: string[] = []
  let at = HEADER_BYTES
  let nameBytes = 0
  for (;;) {
    if (at >= buf.length) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR }
    const len = buf[at] ?? 0
    at += 1
    if (len === 0) break
    // A question has no reason to use compression pointers; 0x40 and 0x80 are reserved label types.
    if (len > 63) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR }
    nameBytes += len + 1
    if (nameBytes > MAX_NAME_BYTES || at + len > buf.length)
      return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR }
    let label = ''
    for (let i = at; i < at + len; i++) {
      let c = buf[i] ?? 0
      if (c >= 0x41 && c <= 0x5a) c += 0x20
      label += String.fromCharCode(c)
    }
    labels.push(label)
    at += len
  }
  if (at + 4 > buf.length) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR }
  const type = buf.readUInt16BE(at)
  const klass = buf.readUInt16BE(at + 2)
  return { ok: true, query: { id, rd, name: labels.join('.'), type, klass, questionEnd: at + 4 } }
}

/** Whether a parsed name is one that km1s could ever hold: DNS-label characters only, no empty label. */
export function isPlainName(name: string): boolean {
  return /^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?$/.test(name)
}

export type Rdata =
  | { type: typeof TYPE.A; address: string }
  | { type: typeof TYPE.SRV; port: number; target: string }

export interface ResourceRecord {
  /** Lower-case owner name; the question's own name is written as a pointer to it. */
  name: string
  ttl: number
  data: Rdata
}

/** Wire form of a name, uncompressed (SRV targets must not be compressed: RFC 2782). */
export function encodeName(name: string): Buffer {
  if (name === '') return Buffer.from([0])
  const parts = name.split('.')
  const out = Buffer.allocUnsafe(name.length + 2)
  let at = 0
  for (const p of parts) {
    out[at++] = p.length
    at += out.write(p, at, 'latin1')
  }
  out[at++] = 0
  return out.subarray(0, at)
}

function encodeRecord(rr: ResourceRecord, qname: string): Buffer {
  const owner = rr.name === qname ? Buffer.from([0xc0, HEADER_BYTES]) : encodeName(rr.name)
  let rdata: Buffer
  if (rr.data.type === TYPE.A) {
    rdata = Buffer.from(rr.data.address.split('.').map(Number))
  } else {
    const target = encodeName(rr.data.target)
    rdata = Buffer.allocUnsafe(6 + target.length)
    rdata.writeUInt16BE(0, 0) // priority
    rdata.writeUInt16BE(10, 2) // weight: equal for every target
    rdata.writeUInt16BE(rr.data.port, 4)
    target.copy(rdata, 6)
  }
  const fixed = Buffer.allocUnsafe(10)
  fixed.writeUInt16BE(rr.data.type, 0)
  fixed.writeUInt16BE(CLASS_IN, 2)
  fixed.writeUInt32BE(rr.ttl, 4)
  fixed.writeUInt16BE(rdata.length, 8)
  return Buffer.concat([owner, fixed, rdata])
}

/** The sections after the question, and their counts: what an answer cache keeps per (name, type). */
export interface EncodedBody {
  bytes: Buffer
  answers: number
  additionals: number
}

export function encodeBody(
  qname: string,
  answers: ResourceRecord[],
  additionals: ResourceRecord[] = [],
): EncodedBody {
  return {
    bytes: Buffer.concat([...answers, ...additionals].map((rr) => encodeRecord(rr, qname))),
    answers: answers.length,
    additionals: additionals.length,
  }
}

/**
 * An answer to `query` (whose bytes are `raw`): the header, the asker's question as it came, then `body`.
 * Authoritative answers set AA; recursion is always offered (other names go upstream).
 */
export function encodeResponse(
  raw: Buffer,
  query: Query,
  rcode: number,
  body: EncodedBody | undefined,
  authoritative: boolean,
): Buffer {
  const qlen = query.questionEnd - HEADER_BYTES
  const out = Buffer.allocUnsafe(HEADER_BYTES + qlen + (body?.bytes.length ?? 0))
  out[0] = query.id >> 8
  out[1] = query.id & 0xff
  out[2] = 0x80 | (authoritative ? 0x04 : 0) | (query.rd ? 0x01 : 0)
  out[3] = 0x80 | rcode
  out.writeUInt16BE(1, 4)
  out.writeUInt16BE(body?.answers ?? 0, 6)
  out.writeUInt16BE(0, 8)
  out.writeUInt16BE(body?.additionals ?? 0, 10)
  out.set(raw.subarray(HEADER_BYTES, query.questionEnd), HEADER_BYTES)
  body?.bytes.copy(out, HEADER_BYTES + qlen)
  return out
}

/** An error answer without the question (FORMERR, NOTIMP for what could not be parsed). */
export function encodeError(id: number, rd: boolean, rcode: number): Buffer {
  const out = Buffer.alloc(HEADER_BYTES)
  out[0] = id >> 8
  out[1] = id & 0xff
  out[2] = 0x80 | (rd ? 0x01 : 0)
  out[3] = 0x80 | rcode
  return out
}

/** Offset just past a (possibly compressed) name at `at`, or -1 when it runs off the end. */
function skipName(buf: Buffer, at: number): number {
  let i = at
  while (i < buf.length) {
    const len = buf[i] ?? 0
    if (len === 0) return i + 1
    if ((len & 0xc0) === 0xc0) return i + 2 <= buf.length ? i + 2 : -1
    if (len > 63) return -1
    i += len + 1
  }
  return -1
}

/**
 * What the forwarder's cache needs of an upstream answer: its rcode, how many answers and their smallest
 * TTL. Hand-written beside the query parser (dns2's index pulls in node:http2 and node:https: +15 MB of
 * RSS per agent); undefined for anything malformed. Never throws.
 */
export function readAnswerTtls(buf: Buffer): { rcode: number; answers: number; minTtl: number } | undefined {
  if (buf.length < HEADER_BYTES) return undefined
  const rcode = (buf[3] ?? 0) & 0x0f
  const qdcount = buf.readUInt16BE(4)
  const ancount = buf.readUInt16BE(6)
  let at = HEADER_BYTES
  for (let i = 0; i < qdcount; i++) {
    at = skipName(buf, at)
    if (at < 0 || at + 4 > buf.length) return undefined
    at += 4
  }
  let minTtl = Number.POSITIVE_INFINITY
  for (let i = 0; i < ancount; i++) {
    at = skipName(buf, at)
    if (at < 0 || at + 10 > buf.length) return undefined
    minTtl = Math.min(minTtl, buf.readUInt32BE(at + 4))
    at += 10 + buf.readUInt16BE(at + 8)
    if (at > buf.length) return undefined
  }
  return { rcode, answers: ancount, minTtl }
}
