import './free-values.ts'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import fc from 'fast-check'
import { computeDigest } from '../../../src/state/digest.ts'
import { type Hlc, receive, tick, ZERO_HLC } from '../../../src/state/hlc.ts'
import {
  collectTombstones,
  compareRecords,
  mergeMaps,
  mergeRecord,
  type RecordMap,
  supersedes,
  TOMBSTONE_HORIZON_MS,
} from '../../../src/state/merge.ts'
import { type SignedRecord, signingBytes, type UnsignedRecord } from '../../../src/state/record.ts'
import { signRecord, validateIncoming } from '../../../src/state/sign.ts'

const privateKeys = await Promise.all([0, 1, 2].map(() => generateKeyPair('Ed25519')))
const peers = privateKeys.map((k) => peerIdFromPrivateKey(k).toString())
const NOW = 1_700_000_000_000

// Fast stand-in signatures for merge-only properties: a hash of the signed bytes, so equal signatures
// mean equal content, as with Ed25519. Sometimes a constant, to reach the content tie-break too.
const fakeSig = (r: UnsignedRecord) => new Uint8Array(createHash('sha512').update(signingBytes(r)).digest())
const CONSTANT_SIG = new Uint8Array(64).fill(7)

const arbRecord = (keys: string[]) =>
  fc
    .record({
      key: fc.constantFrom(...keys),
      wall: fc.integer({ min: 0, max: 3 }),
      counter: fc.integer({ min: 0, max: 2 }),
      author: fc.constantFrom(...peers),
      deleted: fc.boolean(),
      v: fc.integer({ min: 0, max: 2 }),
      constantSig: fc.boolean(),
    })
    .map(({ key, wall, counter, author, deleted, v, constantSig }): SignedRecord => {
      const unsigned: UnsignedRecord = {
        key,
        value: deleted ? null : { v },
        hlc: { wall: NOW + wall, counter },
        author,
        deleted,
      }
      return { ...unsigned, sig: constantSig && v === 0 ? CONSTANT_SIG : fakeSig(unsigned) }
    })

const arbMap = fc
  .array(arbRecord(['tag/a:v', 'tag/b:v', 'tag/c:v', 'tag/d:1']), { maxLength: 12 })
  .map((rs) => rs.reduce<RecordMap>((m, r) => mergeMaps(m, new Map([[r.key, r]])), new Map()))

const sorted = (m: RecordMap) => [...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1))

describe('last-writer-wins merge', () => {
  const one = arbRecord(['tag/a:v'])

  it('is commutative, associative and idempotent on records', () => {
    fc.assert(
      fc.property(one, one, one, (a, b, c) => {
        assert.deepEqual(mergeRecord(a, b), mergeRecord(b, a))
        assert.deepEqual(mergeRecord(mergeRecord(a, b), c), mergeRecord(a, mergeRecord(b, c)))
        assert.deepEqual(mergeRecord(a, a), a)
        assert.equal(Math.sign(compareRecords(a, b)) + Math.sign(compareRecords(b, a)), 0)
        if (compareRecords(a, b) === 0) assert.deepEqual(a, b)
      }),
      { numRuns: 500 },
    )
  })

  it('is commutative, associative and idempotent on maps', () => {
    fc.assert(
      fc.property(arbMap, arbMap, arbMap, (a, b, c) => {
        assert.deepEqual(sorted(mergeMaps(a, b)), sorted(mergeMaps(b, a)))
        assert.deepEqual(sorted(mergeMaps(mergeMaps(a, b), c)), sorted(mergeMaps(a, mergeMaps(b, c))))
        assert.deepEqual(sorted(mergeMaps(a, a)), sorted(a))
      }),
      { numRuns: 200 },
    )
  })

  it('lets the higher clock win, then the higher author, for writes and deletes alike', () => {
    const [p0 = '', p1 = ''] = [...peers].sort()
    const rec = (wall: number, author: string, deleted: boolean): SignedRecord => {
      const u = {
        key: 'tag/a:v',
        value: deleted ? null : { wall },
        hlc: { wall, counter: 0 },
        author,
        deleted,
      }
      return { ...u, sig: fakeSig(u) }
    }
    assert.equal(mergeRecord(rec(1, p1, false), rec(2, p0, true)).deleted, true, 'a later delete wins')
    assert.equal(mergeRecord(rec(3, p0, false), rec(2, p1, true)).deleted, false, 'a later write revives')
    assert.equal(mergeRecord(rec(2, p0, true), rec(2, p1, false)).author, p1, 'equal clocks: higher author')
    assert.ok(supersedes(rec(2, p0, false), undefined))
    assert.ok(!supersedes(rec(2, p0, false), rec(2, p0, false)), 'a duplicate changes nothing')
  })

  it('collects only tombstones older than the horizon', () => {
    const at = (wall: number, deleted: boolean, key: string): SignedRecord => {
      const u = {
        key,
        value: deleted ? null : {},
        hlc: { wall, counter: 0 },
        author: peers[0] ?? '',
        deleted,
      }
      return { ...u, sig: fakeSig(u) }
    }
    const old = NOW - TOMBSTONE_HORIZON_MS - 1
    const map = new Map([
      ['tag/old-tomb:v', at(old, true, 'tag/old-tomb:v')],
      ['tag/new-tomb:v', at(NOW - 1000, true, 'tag/new-tomb:v')],
      ['tag/old-live:v', at(old, false, 'tag/old-live:v')],
    ])
    assert.deepEqual([...collectTombstones(map, NOW).keys()].sort(), ['tag/new-tomb:v', 'tag/old-live:v'])
    assert.deepEqual([...collectTombstones(map, NOW, 500).keys()], ['tag/old-live:v'])
    assert.equal(map.size, 3, 'the input is not changed')
  })
})

// A run of the cluster: writers with skewed clocks write and delete, gossip some records to each other
// while they write, and at the end every replica receives every record, shuffled and duplicated.
type Op =
  | { op: 'write'; writer: number; key: number; del: boolean }
  | { op: 'deliver'; to: number; msg: number }
  | { op: 'advance'; ms: number }

const arbOp: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({ op: fc.constant('write'), writer: fc.nat(2), key: fc.nat(2), del: fc.boolean() }),
    weight: 3,
  },
  { arbitrary: fc.record({ op: fc.constant('deliver'), to: fc.nat(2), msg: fc.nat(1000) }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('advance'), ms: fc.integer({ min: 0, max: 3000 }) }), weight: 1 },
) as fc.Arbitrary<Op>

describe('replicas converge', () => {
  it('for random writes and deletes, clock skew, and any delivery order with duplicates', async () => {
    const keys = ['tag/a:v', `label/${peers[1]}`, 'tag/b:v']
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: -20_000, max: 20_000 }), { minLength: 3, maxLength: 3 }),
        fc.array(arbOp, { maxLength: 25 }),
        fc.array(fc.array(fc.nat(), { maxLength: 60 }), { minLength: 3, maxLength: 3 }),
        async (skews, ops, orders) => {
          let global = NOW
          const nowOf = (w: number) => global + (skews[w] ?? 0)
          const clocks: Hlc[] = [ZERO_HLC, ZERO_HLC, ZERO_HLC]
          const replicas: RecordMap[] = [new Map(), new Map(), new Map()]
          const msgs: SignedRecord[] = []
          // Causal history per writer and per message, to check that LWW never loses a causally later write.
          const seen: Set<number>[] = [new Set(), new Set(), new Set()]
          const past: Set<number>[] = []

          const deliver = async (to: number, m: number) => {
            const rec = msgs[m] as SignedRecord
            const local = nowOf(to)
            assert.deepEqual(await validateIncoming(rec, local), { ok: true })
            const r = receive(clocks[to] as Hlc, rec.hlc, local)
            assert.ok(r.ok)
            clocks[to] = r.hlc
            replicas[to] = mergeMaps(replicas[to] as RecordMap, new Map([[rec.key, rec]]))
            seen[to]?.add(m)
            for (const p of past[m] ?? []) seen[to]?.add(p)
          }

          for (const o of ops) {
            if (o.op === 'advance') global += o.ms
            else if (o.op === 'deliver') {
              if (msgs.length > 0) await deliver(o.to, o.msg % msgs.length)
            } else {
              const hlc = tick(clocks[o.writer] as Hlc, nowOf(o.writer))
              clocks[o.writer] = hlc
              const key = keys[o.key] as string
              const value = o.del
                ? null
                : key.startsWith('label/')
                  ? { n: String(msgs.length) }
                  : { n: msgs.length }
              const rec = await signRecord(privateKeys[o.writer] as (typeof privateKeys)[0], {
                key,
                value,
                hlc,
                deleted: o.del,
              })
              past.push(new Set(seen[o.writer]))
              msgs.push(rec)
              replicas[o.writer] = mergeMaps(replicas[o.writer] as RecordMap, new Map([[key, rec]]))
              seen[o.writer]?.add(msgs.length - 1)
            }
          }

          // Anti-entropy: every replica gets everything, in its own order, with duplicates.
          for (let r = 0; r < 3; r++) {
            const order = [...(orders[r] ?? []).map((i) => i % Math.max(1, msgs.length)), ...msgs.keys()]
            for (const m of order) if (m < msgs.length) await deliver(r, m)
          }

          const [r0, r1, r2] = replicas as [RecordMap, RecordMap, RecordMap]
          assert.deepEqual(sorted(r0), sorted(r1))
          assert.deepEqual(sorted(r0), sorted(r2))
          assert.deepEqual(computeDigest(r0), computeDigest(r2))
          // The winner of each key is never in the causal past of another write to that key.
          for (const [key, winner] of r0) {
            const w = msgs.indexOf(winner)
            msgs.forEach((m, i) => {
              if (m.key === key && i !== w) assert.ok(!past[i]?.has(w), `write ${i} saw ${w} and must win`)
            })
          }
        },
      ),
      { numRuns: 80 },
    )
  })
})
