// Anti-entropy digests: the map cut into 256 buckets by the first byte of sha256(key), one short hash per
// bucket. Two replicas exchange 2 KiB, then only the records of the buckets that differ.
import { createHash } from 'node:crypto'
import { encodeHlc } from './hlc.ts'
import type { RecordMap } from './merge.ts'
import type { SignedRecord } from './record.ts'

export const BUCKETS = 256
/** 8 bytes per bucket: a 2^-64 chance that one differing bucket hashes equal, and a 2 KiB digest. */
export const BUCKET_HASH_BYTES = 8
export const DIGEST_VERSION = 1
export const DIGEST_BYTES = 1 + BUCKETS * BUCKET_HASH_BYTES

/** version(1) | 256 × bucket hash(8); an empty bucket hashes like any other (sha256 of nothing). */
export type Digest = Uint8Array

export function bucketOf(key: string): number {
  return createHash('sha256').update(key, 'utf8').digest()[0] ?? 0
}

/**
 * The hash of one bucket: its records sorted by key, each as key, clock, author, deleted and signature.
 * The signature stands in for the value: same signature, same signed content.
 */
export function bucketHash(records: Iterable<SignedRecord>): Uint8Array {
  const sorted = [...records].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  const h = createHash('sha256')
  for (const r of sorted) {
    const line = `${JSON.stringify(r.key)} ${encodeHlc(r.hlc)} ${r.author} ${r.deleted ? 1 : 0} `
    h.update(line, 'utf8').update(r.sig).update('\n')
  }
  return new Uint8Array(h.digest().subarray(0, BUCKET_HASH_BYTES))
}

/** The records of a map grouped by bucket. */
export function groupByBucket(map: RecordMap): SignedRecord[][] {
  const groups: SignedRecord[][] = Array.from({ length: BUCKETS }, () => [])
  for (const record of map.values()) groups[bucketOf(record.key)]?.push(record)
  return groups
}

export function computeDigest(map: RecordMap): Digest {
  const out = new Uint8Array(DIGEST_BYTES)
  out[0] = DIGEST_VERSION
  groupByBucket(map).forEach((records, i) => {
    out.set(bucketHash(records), 1 + i * BUCKET_HASH_BYTES)
  })
  return out
}

/** Bytes of sha256(digest) in a digest's short hash. */
export const FINGERPRINT_BYTES = 8

/**
 * A digest's short hash: two replicas with equal ones hold the same records but for a 2^-64 chance.
 * `km1s status` shows it in hex; heartbeats carry it as the fingerprint below.
 */
export function digestHash(digest: Digest): Buffer {
  return createHash('sha256').update(digest).digest().subarray(0, FINGERPRINT_BYTES)
}

/**
 * The digest's short hash as a heartbeat carries it (base64url, 11 characters): the periodic anti-entropy
 * session between two replicas with equal fingerprints is skipped.
 */
export function digestFingerprint(digest: Digest): string {
  return digestHash(digest).toString('base64url')
}

/** A digest from the network, or undefined if it is not exactly one of ours. */
export function decodeDigest(bytes: Uint8Array): Digest | undefined {
  return bytes.length === DIGEST_BYTES && bytes[0] === DIGEST_VERSION ? bytes : undefined
}

/** The bucket numbers whose hashes differ, ascending; at most BUCKETS entries. */
export function diffDigests(mine: Digest, theirs: Digest): number[] {
  const out: number[] = []
  for (let b = 0; b < BUCKETS; b++) {
    const at = 1 + b * BUCKET_HASH_BYTES
    for (let i = at; i < at + BUCKET_HASH_BYTES; i++) {
      if (mine[i] !== theirs[i]) {
        out.push(b)
        break
      }
    }
  }
  return out
}

/** The records of `map` that fall into the given buckets: what a replica sends for a digest diff. */
export function recordsInBuckets(map: RecordMap, buckets: Iterable<number>): SignedRecord[] {
  const wanted = new Set(buckets)
  return [...map.values()].filter((r) => wanted.has(bucketOf(r.key)))
}
