import './free-values.ts'
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import fc from 'fast-check'
import { BUCKETS, computeDigest, DIGEST_BYTES } from '../../../src/state/digest.ts'
import { encodeHlc } from '../../../src/state/hlc.ts'
import { checkRecord, encodeRecord, MAX_RECORD_BYTES, toWire } from '../../../src/state/record.ts'
import { signRecord } from '../../../src/state/sign.ts'
import {
  decodeFrame,
  encodeFrame,
  Frame,
  MAX_FRAME_BYTES,
  recordFrames,
} from '../../../src/state/sync-frames.ts'

const NOW = 1_700_000_000_000
const key = await generateKeyPair('Ed25519')
const A = peerIdFromPrivateKey(key).toString()
const utf8 = (s: string) => new TextEncoder().encode(s)
const json = (x: unknown) => utf8(JSON.stringify(x))
const b64 = (n: number) => Buffer.alloc(n, 7).toString('base64')
const badUtf8 = (seq: number[]) =>
  new Uint8Array([...utf8('{"t":"records","r":["a'), ...seq, ...utf8('b"]}')])

/** A wire record of the right shape (recordFrames and decodeFrame do not check signatures). */
const wire = (i: number, pad: string) => ({
  v: 1 as const,
  key: `tag/w${i}:v`,
  value: { pad },
  hlc: encodeHlc({ wall: NOW, counter: i }),
  author: A,
  sig: 'A'.repeat(86),
  deleted: false,
})

describe('sync frames: round trip', () => {
  it('decodes what it encodes, for every frame type', async () => {
    const rec = await signRecord(key, {
      key: 'tag/web:v',
      value: { image: 'nginx', env: { A: '1' } },
      hlc: { wall: NOW, counter: 1 },
      deleted: false,
    })
    const frames: Frame[] = [
      { t: 'digest', d: Buffer.from(computeDigest(new Map([[rec.key, rec]]))).toString('base64') },
      { t: 'diff', b: [] },
      { t: 'diff', b: [0, 17, BUCKETS - 1] },
      { t: 'records', r: [] },
      { t: 'records', r: [toWire(rec), toWire({ ...rec, key: 'tag/db:v' })] },
      { t: 'end' },
    ]
    for (const f of frames) assert.deepEqual(decodeFrame(encodeFrame(f)), f)
    const d = decodeFrame(encodeFrame(frames[0] as Frame))
    assert.ok(d?.t === 'digest')
    assert.equal(Buffer.from(d.d, 'base64').length, DIGEST_BYTES)
  })
})

describe('sync frames: decodeFrame refuses anything else, without throwing', () => {
  const refused: Array<[string, Uint8Array]> = [
    ['empty input', new Uint8Array()],
    ['plain text', utf8('hello, sync')],
    ['truncated JSON', utf8('{"t":"end"')],
    // Each is a valid records frame but for one bad UTF-8 sequence inside a string: a lenient decoder
    // would turn it into U+FFFD and accept the frame.
    ['invalid UTF-8', badUtf8([0xff, 0xfe])],
    ['an overlong UTF-8 encoding', badUtf8([0xc0, 0xaf])],
    ['a lone surrogate in UTF-8', badUtf8([0xed, 0xa0, 0x80])],
    ['a truncated UTF-8 sequence', badUtf8([0xe2, 0x82])],
    ['JSON null', json(null)],
    ['a JSON array', json([{ t: 'end' }])],
    ['a JSON string', json('end')],
    ['a JSON number', json(1)],
    ['an unknown frame type', json({ t: 'hello' })],
    ['a frame without a type', json({ b: [1] })],
    ['an end frame with an extra field', json({ t: 'end', x: 1 })],
    ['a diff with a bucket out of range', json({ t: 'diff', b: [BUCKETS] })],
    ['a diff with a negative bucket', json({ t: 'diff', b: [-1] })],
    ['a diff with a fractional bucket', json({ t: 'diff', b: [1.5] })],
    ['a diff with a string bucket', json({ t: 'diff', b: ['1'] })],
    [
      'a diff with more buckets than exist',
      json({ t: 'diff', b: Array.from({ length: BUCKETS + 1 }, () => 0) }),
    ],
    ['a records frame whose r is an object', json({ t: 'records', r: { 0: {} } })],
    [
      'a records frame with too many entries',
      json({ t: 'records', r: Array.from({ length: 10_001 }, () => 0) }),
    ],
    ['a digest one byte short', json({ t: 'digest', d: b64(DIGEST_BYTES - 1) })],
    ['a digest one byte long', json({ t: 'digest', d: b64(DIGEST_BYTES + 1) })],
    ['an empty digest', json({ t: 'digest', d: '' })],
    ['a digest that is not base64', json({ t: 'digest', d: `${b64(DIGEST_BYTES).slice(0, -4)}!!!!` })],
    ['a digest that is a number', json({ t: 'digest', d: 5 })],
    ['a prototype-polluting frame', utf8('{"t":"end","__proto__":{"polluted":true}}')],
  ]
  for (const [what, bytes] of refused) {
    it(`returns undefined for ${what}`, () => {
      assert.equal(decodeFrame(bytes), undefined)
    })
  }

  it('accepts the same records frame with valid multi-byte UTF-8 (the refusals above are about the bytes)', () => {
    assert.deepEqual(decodeFrame(badUtf8([0xe2, 0x82, 0xac])), { t: 'records', r: ['a€b'] })
  })

  it('accepts a digest of exactly the right size (the refusals above are about the size)', () => {
    assert.deepEqual(decodeFrame(json({ t: 'digest', d: b64(DIGEST_BYTES) })), {
      t: 'digest',
      d: b64(DIGEST_BYTES),
    })
  })

  it('refuses a frame one byte above MAX_FRAME_BYTES and accepts one of exactly MAX_FRAME_BYTES', () => {
    const sized = (n: number) => {
      const head = '{"t":"records","r":["'
      const tail = '"]}'
      const bytes = utf8(head + 'x'.repeat(n - head.length - tail.length) + tail)
      assert.equal(bytes.length, n)
      return bytes
    }
    assert.equal(decodeFrame(sized(MAX_FRAME_BYTES + 1)), undefined)
    const ok = decodeFrame(sized(MAX_FRAME_BYTES))
    assert.equal(ok?.t, 'records')
  })

  it('does not throw on JSON nested far deeper than any record allows', () => {
    const depth = 200_000
    const deep = utf8(`{"t":"records","r":[${'['.repeat(depth)}${']'.repeat(depth)}]}`)
    assert.doesNotThrow(() => decodeFrame(deep))
  })

  it('never throws on random bytes, and returns undefined or a valid frame', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4_096 }), (bytes) => {
        const f = decodeFrame(bytes)
        assert.ok(f === undefined || Frame.safeParse(f).success)
      }),
      { numRuns: 1_000 },
    )
  })

  it('never throws on random JSON and frame-like objects, and returns undefined or a valid frame', () => {
    const frameLike = fc.record(
      {
        t: fc.constantFrom('digest', 'diff', 'records', 'end', 'other'),
        d: fc.oneof(fc.base64String(), fc.string(), fc.integer()),
        b: fc.array(fc.oneof(fc.integer({ min: -2, max: BUCKETS + 1 }), fc.double(), fc.string())),
        r: fc.oneof(fc.array(fc.jsonValue({ maxDepth: 3 })), fc.jsonValue({ maxDepth: 2 })),
        x: fc.jsonValue({ maxDepth: 1 }),
      },
      { requiredKeys: [] },
    )
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), frameLike), (value) => {
        const f = decodeFrame(json(value))
        assert.ok(f === undefined || Frame.safeParse(f).success)
      }),
      { numRuns: 1_000 },
    )
  })
})

describe('sync frames: recordFrames', () => {
  const check = (wires: unknown[]) => {
    const frames = recordFrames(wires)
    for (const f of frames) {
      assert.equal(f.t, 'records')
      if (f.t !== 'records') continue
      assert.ok(f.r.length > 0, 'no empty records frame')
      const bytes = encodeFrame(f)
      assert.ok(bytes.length < MAX_FRAME_BYTES, `a frame of ${bytes.length} bytes`)
      assert.deepEqual(decodeFrame(bytes), f, 'the receiver accepts every frame the sender makes')
    }
    assert.deepEqual(
      frames.flatMap((f) => (f.t === 'records' ? f.r : [])),
      wires,
    )
    return frames
  }

  it('splits many records into frames below MAX_FRAME_BYTES whose concatenation is the input', () => {
    // 3,000 records of 200 B to 60 kB: about 30 MB, so many frames.
    const sizes = Array.from({ length: 3_000 }, (_, i) =>
      i % 97 === 0 ? 60_000 : 200 + ((i * 7_919) % 20_000),
    )
    const wires = sizes.map((n, i) => wire(i, 'x'.repeat(n)))
    const frames = check(wires)
    assert.ok(frames.length > 10, `${frames.length} frames`)
  })

  it('makes no frame for no records, and one frame for one record', () => {
    assert.deepEqual(recordFrames([]), [])
    const one = wire(1, 'x')
    assert.deepEqual(recordFrames([one]), [{ t: 'records', r: [one] }])
  })

  it('keeps the order and splits below MAX_FRAME_BYTES for any record sizes up to the record limit', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: MAX_RECORD_BYTES - 300 }), { minLength: 1, maxLength: 60 }),
        (sizes) => {
          check(sizes.map((n, i) => wire(i, 'x'.repeat(n))))
        },
      ),
      { numRuns: 40 },
    )
  })

  it('keeps frames below MAX_FRAME_BYTES when values hold non-ASCII text', async () => {
    // A valid record just under the 64 KiB limit: 21,000 × '€' is 63,000 UTF-8 bytes but 21,000 UTF-16 units.
    const rec = await signRecord(key, {
      key: 'tag/w0:v',
      value: { note: '€'.repeat(21_000) },
      hlc: { wall: NOW, counter: 0 },
      deleted: false,
    })
    assert.deepEqual(checkRecord(rec, NOW), { ok: true })
    assert.ok(encodeRecord(rec).length <= MAX_RECORD_BYTES)
    const wires = Array.from({ length: 40 }, (_, i) => ({ ...toWire(rec), key: `tag/w${i}:v` }))
    check(wires)
  })
})
