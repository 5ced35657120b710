import './free-values.ts'
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import fc from 'fast-check'
import { MAX_DRIFT_MS } from '../../../src/state/hlc.ts'
import { mayWrite, parseKey } from '../../../src/state/keys.ts'
import {
  checkRecord,
  decodeRecord,
  encodeRecord,
  MAX_RECORD_BYTES,
  type RecordDraft,
  type SignedRecord,
  signingBytes,
} from '../../../src/state/record.ts'
import { signRecord, validateIncoming, verifyRecord } from '../../../src/state/sign.ts'

const NOW = 1_700_000_000_000
const keys = await Promise.all([0, 1].map(() => generateKeyPair('Ed25519')))
const [keyA, keyB] = keys as [(typeof keys)[0], (typeof keys)[0]]
const A = peerIdFromPrivateKey(keyA).toString()
const B = peerIdFromPrivateKey(keyB).toString()

const draft = (key: string, value: RecordDraft['value'], over: Partial<RecordDraft> = {}): RecordDraft => ({
  key,
  value,
  hlc: { wall: NOW, counter: 3 },
  deleted: false,
  ...over,
})

describe('record signatures', () => {
  it('round-trips sign, wire encoding and verify for any JSON value', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 3 })),
        async (value) => {
          const rec = await signRecord(keyA, draft('tag/web:v', value as RecordDraft['value']))
          assert.equal(rec.author, A)
          assert.ok(await verifyRecord(rec))
          const back = decodeRecord(encodeRecord(rec))
          assert.ok(back.ok)
          assert.ok(await verifyRecord(back.record))
          assert.deepEqual(await validateIncoming(back.record, NOW), { ok: true })
        },
      ),
      { numRuns: 60 },
    )
  })

  it('signs canonical bytes: key order inside the value does not matter', async () => {
    const one = signingBytes({ ...draft('tag/web:v', { a: 1, b: { c: 2, d: 3 } }), author: A })
    const two = signingBytes({ ...draft('tag/web:v', { b: { d: 3, c: 2 }, a: 1 }), author: A })
    assert.deepEqual(one, two)
  })

  it('no single-byte change of the wire form yields a different record that verifies', async () => {
    const rec = await signRecord(keyA, draft(`label/${B}`, { zone: 'kitchen', tier: 'edge' }))
    const wire = encodeRecord(rec)
    let decodedTampers = 0
    for (let i = 0; i < wire.length; i++) {
      for (const flip of [0x01, 0x02, 0x20]) {
        const bytes = new Uint8Array(wire)
        bytes[i] = (bytes[i] ?? 0) ^ flip
        const back = decodeRecord(bytes)
        if (!back.ok) continue
        decodedTampers++
        if (await verifyRecord(back.record)) {
          // Only a change that decodes to the very same record (e.g. unused base64 bits) may verify.
          assert.deepEqual(back.record, rec, `byte ${i} ^ ${flip}`)
        } else {
          const verdict = await validateIncoming(back.record, NOW)
          assert.equal(verdict.ok, false, `byte ${i} ^ ${flip}`)
        }
      }
    }
    assert.ok(decodedTampers > 100, 'the tampers reached key, value, clock and author, not just the syntax')
  })

  it('fails verify for a changed key, value, clock, author or delete flag', async () => {
    const rec = await signRecord(keyA, draft('tag/web:v', { image: 'nginx' }))
    const changed: SignedRecord[] = [
      { ...rec, key: 'tag/wec:v' },
      { ...rec, value: { image: 'nginy' } },
      { ...rec, hlc: { ...rec.hlc, counter: rec.hlc.counter + 1 } },
      { ...rec, hlc: { ...rec.hlc, wall: rec.hlc.wall - 1 } },
      { ...rec, author: B },
      { ...rec, deleted: true },
      { ...rec, sig: rec.sig.subarray(1) },
    ]
    for (const r of changed) assert.equal(await verifyRecord(r), false)
  })
})

describe('key space and ownership', () => {
  it('parses every kind of key and refuses anything else', () => {
    const good = [
      `node/${A}`,
      `status/${A}/web-1`,
      `label/${B}`,
      'tag/web:v',
      'tag/db:v',
      'tag/web:v1.2',
      'subnet/10.42.0.0/16',
      'subnet/fd00::/64',
    ]
    for (const k of good) assert.ok(parseKey(k), k)
    const bad = [
      'foo/bar',
      'node',
      'node/',
      `node/${A}/x`,
      'node/QmNotAnEd25519PeerIdAtAll',
      `status/${A}`,
      `status/${A}/a/b`,
      'tag/Web:v',
      'tag/-web:v',
      'tag/a:v/b',
      'tag/web',
      'tag/:v1',
      'tag/web:',
      'subnet/10.42.0.0',
      'subnet/10.42.0.0/33',
      'subnet/10.42.0.0/016',
      'subnet/fd00::/129',
      'subnet/FD00::/64',
      'subnet/banana/8',
      '',
    ]
    for (const k of bad) assert.equal(parseKey(k), undefined, k)
  })

  it('lets only a node write its own node/ and status/ records; anyone writes the rest', () => {
    assert.ok(mayWrite(`node/${A}`, A))
    assert.ok(mayWrite(`status/${A}/web`, A))
    assert.equal(mayWrite(`node/${A}`, B), false)
    assert.equal(mayWrite(`status/${A}/web`, B), false)
    for (const k of [`label/${A}`, 'tag/web:v', 'tag/web:v', 'tag/web:v1', 'subnet/10.0.0.0/8'])
      assert.ok(mayWrite(k, B), k)
  })

  it('drops a correctly signed record for another node’s node/ or status/ as forged-owner', async () => {
    const nodeValue = (name: string) => ({
      name,
      arch: 'arm64',
      cpus: 4,
      memory: 1 << 30,
      version: '0.1.0',
      addresses: [],
      startedAt: 1,
      wgPublicKey: null,
    })
    const statusValue = (node: string) => ({
      workload: 'web',
      node,
      state: 'running',
      ip: null,
      restarts: 0,
      reason: null,
      startedAt: null,
      index: 0,
      spec: 'abc',
      healthy: true,
    })
    const recordValue = (key: string, name: string) =>
      key.startsWith('node/') ? nodeValue(name) : statusValue(name)
    for (const key of [`node/${A}`, `status/${A}/web`]) {
      const forged = await signRecord(keyB, draft(key, recordValue(key, 'evil')))
      assert.ok(await verifyRecord(forged), 'the signature itself is fine')
      assert.deepEqual(await validateIncoming(forged, NOW), { ok: false, reason: 'forged-owner' })
      const own = await signRecord(keyA, draft(key, recordValue(key, 'pi-1')))
      assert.deepEqual(await validateIncoming(own, NOW), { ok: true })
      // `km1s forget`: any member may delete another node's records; the owner rewrites them if alive.
      const forget = await signRecord(keyB, {
        key,
        value: null,
        hlc: { wall: NOW, counter: 0 },
        deleted: true,
      })
      assert.deepEqual(await validateIncoming(forget, NOW), { ok: true })
    }
    const label = await signRecord(keyB, draft(`label/${A}`, { zone: 'garage' }))
    assert.deepEqual(await validateIncoming(label, NOW), { ok: true })
  })

  it('drops a record whose author was swapped for a member key as bad-signature', async () => {
    const rec = await signRecord(keyB, draft('tag/web:v', { image: 'nginx' }))
    assert.deepEqual(await validateIncoming({ ...rec, author: A }, NOW), {
      ok: false,
      reason: 'bad-signature',
    })
  })
})

describe('incoming validation', () => {
  it('drops each kind of bad record with its reason', async () => {
    const signed = (d: RecordDraft) => signRecord(keyA, d)
    const cases: [string, SignedRecord, string][] = [
      ['unknown key', await signed(draft('secrets/x', { a: 1 })), 'unknown-key'],
      ['key over 256 bytes', await signed(draft(`tag/${'a'.repeat(300)}:v`, {})), 'oversized'],
      ['label with a bad label key', await signed(draft(`label/${A}`, { 'bad key': 'x' })), 'invalid-value'],
      ['label value not a string', await signed(draft(`label/${A}`, { zone: 3 })), 'invalid-value'],
      ['workload value not an object', await signed(draft('tag/web:v', 'nginx')), 'invalid-value'],
      ['tombstone with a value', await signed(draft('tag/web:v', {}, { deleted: true })), 'invalid-value'],
      // signRecord refuses such a value locally, so the hostile one is hand-made (checks precede the signature).
      [
        'value nested too deep',
        { ...(await signed(draft('tag/web:v', {}))), value: deep(40) },
        'invalid-value',
      ],
      [
        'value over 64 KiB',
        await signed(draft('tag/web:v', { blob: 'x'.repeat(MAX_RECORD_BYTES) })),
        'oversized',
      ],
      [
        'clock too far ahead',
        await signed(draft('tag/web:v', {}, { hlc: { wall: NOW + MAX_DRIFT_MS + 1, counter: 0 } })),
        'clock-drift',
      ],
    ]
    for (const [what, rec, reason] of cases)
      assert.deepEqual(await validateIncoming(rec, NOW), { ok: false, reason }, what)
    await assert.rejects(signed(draft('tag/web:v', deep(40))), { code: 'ERR_STATE_VALUE' })
    const tomb = await signed(draft('tag/web:v', null, { deleted: true }))
    assert.deepEqual(await validateIncoming(tomb, NOW), { ok: true })
  })

  it('checks the cheap things before the signature', () => {
    const unsigned = { ...draft('tag/web:v', {}), author: A, sig: new Uint8Array(64) }
    assert.deepEqual(checkRecord(unsigned, NOW), { ok: true })
    assert.deepEqual(checkRecord({ ...unsigned, key: `node/${B}` }, NOW), {
      ok: false,
      reason: 'forged-owner',
    })
  })

  it('refuses oversized wire bytes before parsing them', () => {
    assert.deepEqual(decodeRecord(new Uint8Array(MAX_RECORD_BYTES + 1).fill(0x20)), {
      ok: false,
      reason: 'oversized',
    })
    assert.deepEqual(decodeRecord(new Uint8Array(200).fill(0x20), 100), { ok: false, reason: 'oversized' })
  })

  it('refuses malformed wire input, never throwing', async () => {
    const rec = await signRecord(keyA, draft('tag/web:v', { image: 'nginx' }))
    const wire = JSON.parse(new TextDecoder().decode(encodeRecord(rec)))
    const enc = (x: unknown) => new TextEncoder().encode(JSON.stringify(x))
    const bad = [
      new Uint8Array([0xff, 0xfe, 0x00]),
      new TextEncoder().encode('{"v":1,'),
      enc(null),
      enc([wire]),
      enc({ ...wire, v: 2 }),
      enc({ ...wire, extra: true }),
      enc({ ...wire, sig: wire.sig.slice(1) }),
      enc({ ...wire, hlc: '1' }),
      enc({ ...wire, author: 'QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N' }),
      enc({ ...wire, deleted: 'no' }),
      enc({ ...wire, key: undefined }),
    ]
    for (const b of bad) assert.deepEqual(decodeRecord(b), { ok: false, reason: 'malformed' })
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        assert.equal(decodeRecord(bytes).ok, false)
      }),
      { numRuns: 300 },
    )
  })
})

function deep(n: number): RecordDraft['value'] {
  let v: RecordDraft['value'] = {}
  for (let i = 0; i < n; i++) v = { a: v }
  return v
}
