// The signed record, its canonical signing bytes, its wire form and the checks every incoming record
// passes before it may be merged. A record that fails any check is dropped and counted, never merged.
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { decodeHlc, encodeHlc, type Hlc, isValidHlc, MAX_DRIFT_MS } from './hlc.ts'
import { type KeyKind, MAX_KEY_BYTES, mayWrite, parseKey } from './keys.ts'

/** The largest encoded (wire) record; bounds memory per record and per gossip message. */
export const MAX_RECORD_BYTES = 64 * 1024
// JSON nesting deeper than this is refused before any recursive walk, so no input can blow the stack.
export const MAX_VALUE_DEPTH = 32
const SIG_BYTES = 64
const SIGNING_DOMAIN = 'km1s-record/1'

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

export type UnsignedRecord = {
  readonly key: string
  /** null for a tombstone. */
  readonly value: JsonValue
  readonly hlc: Hlc
  /** The writer's peer id (Ed25519, base58btc); its public key verifies `sig`. */
  readonly author: string
  readonly deleted: boolean
}
export type SignedRecord = UnsignedRecord & { readonly sig: Uint8Array }
/** What a writer supplies; the author comes from the signing key, so it cannot be mistyped. */
export type RecordDraft = Omit<UnsignedRecord, 'author'>

export type DropReason =
  | 'bad-signature'
  | 'forged-owner'
  | 'invalid-value'
  | 'oversized'
  | 'unknown-key'
  | 'clock-drift'
  | 'malformed'
export type Verdict = { ok: true } | { ok: false; reason: DropReason }

// Values per key kind. The later sessions that own workloads, services and node records tighten these;
// until then any JSON object passes, bounded by MAX_RECORD_BYTES and MAX_VALUE_DEPTH.
export const LabelKey = z
  .string()
  .check(
    z.regex(
      /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/,
      'a label key is letters, digits, dashes, dots and underscores, optionally after a DNS prefix and a slash',
    ),
  )
export const LabelValue = z
  .string()
  .check(
    z.regex(
      /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/,
      'a label value is at most 63 letters, digits, dashes, dots and underscores',
    ),
  )
const AnyObject = z.record(z.string(), z.unknown())
/** A node's own record: what `km1s nodes` shows besides liveness (membership/ writes it). */
export const NodeValue = z.strictObject({
  name: z.string().check(z.regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/)),
  arch: z.string().check(z.minLength(1), z.maxLength(16)),
  cpus: z.number().check(z.int(), z.minimum(1), z.maximum(4096)),
  memory: z.number().check(z.int(), z.minimum(0)),
  version: z.string().check(z.minLength(1), z.maxLength(32)),
  addresses: z.array(z.string().check(z.maxLength(200))).check(z.maxLength(16)),
  startedAt: z.number().check(z.int(), z.minimum(0)),
  /** The node's WireGuard public key, once the network subsystem has one. */
  wgPublicKey: z.nullable(z.string().check(z.maxLength(64))),
})
export type NodeValue = z.infer<typeof NodeValue>

/** `tag/<name>:<tag>`: one root CID per arch (artifacts/ writes it; docs/artifacts.md). */
export const TagValue = z.strictObject({
  arches: z
    .record(
      z.string().check(z.regex(/^[a-z0-9]{1,16}$/)),
      z.strictObject({
        /** The root CID, CIDv1 in base32. */
        cid: z.string().check(z.regex(/^b[a-z2-7]{20,120}$/)),
        size: z.number().check(z.int(), z.minimum(0)),
        pushedAt: z.number().check(z.int(), z.minimum(0)),
      }),
    )
    .check(z.refine((a) => Object.keys(a).length <= 16, 'at most 16 arches')),
})
export type TagValue = z.infer<typeof TagValue>

export const VALUE_SCHEMAS: { readonly [K in KeyKind]: z.ZodMiniType } = {
  node: NodeValue,
  status: AnyObject,
  label: z.record(LabelKey, LabelValue).check(z.refine((labels) => Object.keys(labels).length <= 64)),
  workload: AnyObject,
  service: AnyObject,
  tag: TagValue,
  subnet: AnyObject,
}

function depthWithin(value: unknown, limit: number): boolean {
  if (limit < 0) return false
  if (Array.isArray(value)) return value.every((v) => depthWithin(v, limit - 1))
  if (value !== null && typeof value === 'object')
    return Object.values(value).every((v) => depthWithin(v, limit - 1))
  return true
}

function canonical(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw badValue('a number that is not finite')
    return JSON.stringify(value)
  }
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value)
    if (proto !== Object.prototype && proto !== null) throw badValue('an object that is not plain JSON')
    const entries = Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
    return `{${entries.join(',')}}`
  }
  throw badValue(`a ${typeof value}`)
}

const badValue = (what: string) =>
  new Km1sError('ERR_STATE_VALUE', `A record value must be plain JSON, but it contains ${what}.`)

/** JSON with object keys sorted: one byte string per value, whatever order the keys arrived in. */
export function canonicalJson(value: unknown): string {
  if (!depthWithin(value, MAX_VALUE_DEPTH))
    throw new Km1sError('ERR_STATE_VALUE', `A record value may nest at most ${MAX_VALUE_DEPTH} levels deep.`)
  return canonical(value)
}

/** The bytes the author signs: every field but the signature, in a fixed order, under a domain tag. */
export function signingBytes(r: UnsignedRecord): Uint8Array {
  const text = [
    SIGNING_DOMAIN,
    JSON.stringify(r.key),
    encodeHlc(r.hlc),
    JSON.stringify(r.author),
    r.deleted ? 'deleted' : 'live',
    canonicalJson(r.value),
  ].join('\n')
  return new TextEncoder().encode(text)
}

export async function signRecord(privateKey: PrivateKey, draft: RecordDraft): Promise<SignedRecord> {
  const author = peerIdFromPrivateKey(privateKey).toString()
  const unsigned: UnsignedRecord = { ...draft, author }
  // A plain Uint8Array (Node hands back a Buffer), so signed and decoded records compare equal.
  const sig = new Uint8Array(await privateKey.sign(signingBytes(unsigned)))
  return { ...unsigned, sig }
}

/** True only when `sig` is the author's signature over exactly these fields. Never throws. */
export async function verifyRecord(r: SignedRecord): Promise<boolean> {
  try {
    if (r.sig.length !== SIG_BYTES) return false
    const peer = peerIdFromString(r.author)
    if (peer.type !== 'Ed25519' || peer.toString() !== r.author) return false
    return await peer.publicKey.verify(signingBytes(r), r.sig)
  } catch {
    return false
  }
}

// The wire form: JSON, the clock in its sortable string form, the signature in base64url.
export const WireRecord = z.strictObject({
  v: z.literal(1),
  key: z.string().check(z.minLength(1)),
  value: z.unknown(),
  hlc: z.string().check(z.regex(/^[0-9a-f]{12}\.[0-9a-f]{6}$/)),
  author: z.string().check(z.regex(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)),
  sig: z.string().check(z.regex(/^[A-Za-z0-9_-]{86}$/)),
  deleted: z.boolean(),
})
export type WireRecord = z.infer<typeof WireRecord>

export function toWire(r: SignedRecord): WireRecord {
  return {
    v: 1,
    key: r.key,
    value: r.value,
    hlc: encodeHlc(r.hlc),
    author: r.author,
    sig: Buffer.from(r.sig).toString('base64url'),
    deleted: r.deleted,
  }
}

export function encodeRecord(r: SignedRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(toWire(r)))
}

export type Decoded = { ok: true; record: SignedRecord } | { ok: false; reason: 'oversized' | 'malformed' }

/** Parses one record from wire JSON (already parsed, e.g. inside a batch) without trusting any of it. */
export function fromWire(input: unknown): Decoded {
  const parsed = WireRecord.safeParse(input)
  if (!parsed.success) return { ok: false, reason: 'malformed' }
  const w = parsed.data
  const hlc = decodeHlc(w.hlc)
  const sig = new Uint8Array(Buffer.from(w.sig, 'base64url'))
  if (!hlc || sig.length !== SIG_BYTES) return { ok: false, reason: 'malformed' }
  const value = (w.value ?? null) as JsonValue
  return { ok: true, record: { key: w.key, value, hlc, author: w.author, sig, deleted: w.deleted } }
}

/** Parses one record from wire bytes; the size limit is checked before any parsing. */
export function decodeRecord(bytes: Uint8Array, maxBytes = MAX_RECORD_BYTES): Decoded {
  if (bytes.length > maxBytes) return { ok: false, reason: 'oversized' }
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  return fromWire(json)
}

export type CheckOptions = { maxDriftMs?: number; maxRecordBytes?: number }

/** Every check but the signature, cheapest first; for local writes and as the first half of validateIncoming. */
export function checkRecord(r: SignedRecord, now: number, opts: CheckOptions = {}): Verdict {
  if (Buffer.byteLength(r.key, 'utf8') > MAX_KEY_BYTES) return { ok: false, reason: 'oversized' }
  const parsed = parseKey(r.key)
  if (!parsed) return { ok: false, reason: 'unknown-key' }
  if (!mayWrite(r.key, r.author, r.deleted)) return { ok: false, reason: 'forged-owner' }
  if (!isValidHlc(r.hlc)) return { ok: false, reason: 'malformed' }
  if (r.hlc.wall > now + (opts.maxDriftMs ?? MAX_DRIFT_MS)) return { ok: false, reason: 'clock-drift' }
  if (r.deleted) {
    if (r.value !== null) return { ok: false, reason: 'invalid-value' }
  } else {
    try {
      canonicalJson(r.value)
    } catch {
      return { ok: false, reason: 'invalid-value' }
    }
    if (!VALUE_SCHEMAS[parsed.kind].safeParse(r.value).success) return { ok: false, reason: 'invalid-value' }
  }
  if (encodeRecord(r).length > (opts.maxRecordBytes ?? MAX_RECORD_BYTES))
    return { ok: false, reason: 'oversized' }
  return { ok: true }
}

/** The full gate for a record from the network: checkRecord, then the signature. */
export async function validateIncoming(
  r: SignedRecord,
  now: number,
  opts: CheckOptions = {},
): Promise<Verdict> {
  const verdict = checkRecord(r, now, opts)
  if (!verdict.ok) return verdict
  return (await verifyRecord(r)) ? verdict : { ok: false, reason: 'bad-signature' }
}
