import './free-values.ts'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  BUCKETS,
  bucketOf,
  computeDigest,
  DIGEST_BYTES,
  decodeDigest,
  diffDigests,
  digestFingerprint,
  digestHash,
  recordsInBuckets,
} from '../../../src/state/digest.ts'
import { mergeMaps, type RecordMap } from '../../../src/state/merge.ts'
import { type SignedRecord, signingBytes, type UnsignedRecord } from '../../../src/state/record.ts'

const AUTHORS = [
  '12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  '12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB',
]
// As with Ed25519, the signature is a function of the signed content.
const fakeSig = (r: UnsignedRecord) => new Uint8Array(createHash('sha512').update(signingBytes(r)).digest())

const arbRecord = fc
  .record({
    key: fc.integer({ min: 0, max: 40 }).map((i) => `tag/w${i}:v`),
    wall: fc.integer({ min: 0, max: 2 }),
    author: fc.constantFrom(...AUTHORS),
    deleted: fc.boolean(),
    v: fc.integer({ min: 0, max: 1 }),
  })
  .map(({ key, wall, author, deleted, v }): SignedRecord => {
    const u: UnsignedRecord = {
      key,
      value: deleted ? null : { v },
      hlc: { wall, counter: 0 },
      author,
      deleted,
    }
    return { ...u, sig: fakeSig(u) }
  })

// Small pools so that two random maps are often equal or differ in a single record.
const arbMap = fc
  .array(arbRecord, { maxLength: 30 })
  .map((rs) => rs.reduce<RecordMap>((m, r) => mergeMaps(m, new Map([[r.key, r]])), new Map()))
const arbPair = fc.oneof(
  fc.tuple(arbMap, arbMap),
  arbMap.map((m) => [m, new Map([...m.entries()].reverse())] as const),
  fc.tuple(arbMap, arbRecord).map(([m, r]) => [m, mergeMaps(m, new Map([[r.key, r]]))] as const),
)

const sameRecord = (a: SignedRecord | undefined, b: SignedRecord | undefined) =>
  a === b || (a !== undefined && b !== undefined && Buffer.from(a.sig).equals(b.sig) && a.key === b.key)

describe('anti-entropy digests', () => {
  it('are equal exactly when the maps are equal, and diff names exactly the differing buckets', () => {
    let equalPairs = 0
    fc.assert(
      fc.property(arbPair, ([a, b]) => {
        const expected = new Set<number>()
        for (const key of new Set([...a.keys(), ...b.keys()]))
          if (!sameRecord(a.get(key), b.get(key))) expected.add(bucketOf(key))
        const da = computeDigest(a)
        const db = computeDigest(b)
        assert.equal(da.length, DIGEST_BYTES)
        assert.deepEqual(
          diffDigests(da, db),
          [...expected].sort((x, y) => x - y),
        )
        assert.equal(Buffer.from(da).equals(db), expected.size === 0)
        if (expected.size === 0) equalPairs++
      }),
      { numRuns: 300 },
    )
    assert.ok(equalPairs > 10, 'the generator produced equal maps too')
  })

  it('does not depend on insertion order', () => {
    fc.assert(
      fc.property(arbMap, (m) => {
        const reversed = new Map([...m.entries()].reverse())
        assert.deepEqual(computeDigest(reversed), computeDigest(m))
      }),
      { numRuns: 100 },
    )
  })

  it('syncing only the differing buckets both ways makes the digests equal', () => {
    fc.assert(
      fc.property(arbMap, arbMap, (a, b) => {
        const diff = diffDigests(computeDigest(a), computeDigest(b))
        const fromB = new Map(recordsInBuckets(b, diff).map((r) => [r.key, r]))
        const fromA = new Map(recordsInBuckets(a, diff).map((r) => [r.key, r]))
        assert.deepEqual(computeDigest(mergeMaps(a, fromB)), computeDigest(mergeMaps(b, fromA)))
      }),
      { numRuns: 200 },
    )
  })

  it('spreads keys over all buckets and accepts only well-formed digests', () => {
    const used = new Set(Array.from({ length: 5000 }, (_, i) => bucketOf(`tag/w${i}:v`)))
    assert.equal(used.size, BUCKETS)
    const d = computeDigest(new Map())
    assert.equal(decodeDigest(d), d)
    assert.equal(decodeDigest(d.subarray(1)), undefined)
    assert.equal(decodeDigest(new Uint8Array(DIGEST_BYTES)), undefined, 'wrong version byte')
    assert.equal(decodeDigest(new Uint8Array(DIGEST_BYTES + 1).fill(1)), undefined)
  })
})

describe('digestFingerprint', () => {
  it('is 11 base64url characters, equal for equal digests and different when one bucket differs', () => {
    const a = new Uint8Array(DIGEST_BYTES)
    a[0] = 1
    const b = Uint8Array.from(a)
    assert.match(digestFingerprint(a), /^[A-Za-z0-9_-]{11}$/)
    // km1s status shows the same short hash as 16 hex digits of sha256(digest).
    assert.equal(digestHash(a).toString('hex'), createHash('sha256').update(a).digest('hex').slice(0, 16))
    assert.equal(digestFingerprint(a), digestHash(a).toString('base64url'))
    assert.equal(digestFingerprint(a), digestFingerprint(b))
    fc.assert(
      fc.property(fc.integer({ min: 1, max: DIGEST_BYTES - 1 }), fc.integer({ min: 1, max: 255 }), (i, x) => {
        const c = Uint8Array.from(a)
        c[i] = x
        return digestFingerprint(c) !== digestFingerprint(a)
      }),
    )
  })
})
