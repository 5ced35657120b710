// Last-writer-wins merge. compareRecords is a total order on records, so merge is a join on a
// semilattice: commutative, associative and idempotent, and replicas that saw the same records agree.
import { compareHlc } from './hlc.ts'
import { canonicalJson, type SignedRecord } from './record.ts'

export type RecordMap = ReadonlyMap<string, SignedRecord>

/** Tombstones older than this are forgotten; a replica offline longer than this may resurrect a delete. */
export const TOMBSTONE_HORIZON_MS = 7 * 24 * 60 * 60 * 1000

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0)
    if (d !== 0) return d < 0 ? -1 : 1
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1
}

const compareStrings = (a: string, b: string) => (a === b ? 0 : a < b ? -1 : 1)

/**
 * Orders two versions of a key: higher clock, then higher author id, then the signature bytes. The last
 * two steps only matter for an author that signed two values with one clock (a bug or an attack); the
 * content comparison after them makes the order total even for unverified records.
 */
export function compareRecords(a: SignedRecord, b: SignedRecord): number {
  return (
    compareHlc(a.hlc, b.hlc) ||
    compareStrings(a.author, b.author) ||
    compareBytes(a.sig, b.sig) ||
    Number(a.deleted) - Number(b.deleted) ||
    compareStrings(canonicalJson(a.value), canonicalJson(b.value))
  )
}

/** The winner of two versions of the same key. */
export function mergeRecord(a: SignedRecord, b: SignedRecord): SignedRecord {
  return compareRecords(a, b) >= 0 ? a : b
}

/** True when `incoming` would replace `current` (or there is no current): what the store applies. */
export function supersedes(incoming: SignedRecord, current: SignedRecord | undefined): boolean {
  return current === undefined || compareRecords(incoming, current) > 0
}

/** The key-wise merge of two maps; neither input is changed. */
export function mergeMaps(a: RecordMap, b: RecordMap): Map<string, SignedRecord> {
  const out = new Map(a)
  for (const [key, record] of b) {
    const mine = out.get(key)
    out.set(key, mine === undefined ? record : mergeRecord(mine, record))
  }
  return out
}

/** The map without tombstones whose clock is older than `horizonMs` before `now`. */
export function collectTombstones(
  map: RecordMap,
  now: number,
  horizonMs = TOMBSTONE_HORIZON_MS,
): Map<string, SignedRecord> {
  const out = new Map<string, SignedRecord>()
  for (const [key, record] of map) {
    if (!(record.deleted && record.hlc.wall < now - horizonMs)) out.set(key, record)
  }
  return out
}
