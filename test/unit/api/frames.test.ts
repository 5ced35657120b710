import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  encodeChunked,
  encodeFrame,
  encodeJsonFrame,
  Frame,
  FrameDecoder,
  MAX_FRAME_PAYLOAD,
} from '../../../src/api/schemas.ts'

describe('exec frames', () => {
  it('encodes [type u8][length u32be][payload]', () => {
    assert.deepEqual([...encodeFrame(Frame.stdin, 'hi')], [1, 0, 0, 0, 2, 104, 105])
    assert.deepEqual([...encodeFrame(Frame.stdinEof)], [2, 0, 0, 0, 0])
    assert.deepEqual(
      JSON.parse(encodeJsonFrame(Frame.exit, { code: 3, signal: null }).subarray(5).toString()),
      {
        code: 3,
        signal: null,
      },
    )
    assert.throws(() => encodeFrame(Frame.stdout, Buffer.alloc(MAX_FRAME_PAYLOAD + 1)), RangeError)
  })

  it('decodes any sequence of frames however the byte stream is cut', () => {
    const frame = fc.record({
      type: fc.integer({ min: 0, max: 255 }),
      payload: fc.uint8Array({ maxLength: 300 }),
    })
    fc.assert(
      fc.property(
        fc.array(frame, { maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 30 }),
        (frames, cuts) => {
          const bytes = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload)))
          const points = [...new Set(cuts.map((c) => (bytes.length === 0 ? 0 : c % bytes.length)))].sort(
            (a, b) => a - b,
          )
          const d = new FrameDecoder()
          const out: Array<{ type: number; payload: number[] }> = []
          let from = 0
          for (const p of [...points, bytes.length]) {
            for (const f of d.push(bytes.subarray(from, p)))
              out.push({ type: f.type, payload: [...f.payload] })
            from = p
          }
          assert.deepEqual(
            out,
            frames.map((f) => ({ type: f.type, payload: [...f.payload] })),
          )
          assert.equal(d.pending, 0)
        },
      ),
    )
  })

  it('decodes a stream delivered one byte at a time', () => {
    const bytes = Buffer.concat([encodeFrame(4, Buffer.alloc(1000, 7)), encodeFrame(6, '{}')])
    const d = new FrameDecoder()
    const got = []
    for (let i = 0; i < bytes.length; i++) got.push(...d.push(bytes.subarray(i, i + 1)))
    assert.deepEqual(
      got.map((f) => [f.type, f.payload.length]),
      [
        [4, 1000],
        [6, 2],
      ],
    )
  })

  it('refuses a frame longer than 64 KiB as soon as its header arrives', () => {
    const d = new FrameDecoder()
    const header = Buffer.from([1, 0, 1, 0, 1])
    assert.throws(() => d.push(header), { code: 'ERR_BAD_FRAME' })
    assert.deepEqual(
      new FrameDecoder().push(encodeFrame(1, Buffer.alloc(MAX_FRAME_PAYLOAD)))[0]?.payload.length,
      MAX_FRAME_PAYLOAD,
    )
  })

  it('chunks large output into frames of at most 64 KiB', () => {
    const data = Buffer.alloc(MAX_FRAME_PAYLOAD * 2 + 5, 1)
    const frames = encodeChunked(Frame.stdout, data)
    assert.deepEqual(
      frames.map((f) => f.length - 5),
      [MAX_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD, 5],
    )
    assert.deepEqual(encodeChunked(Frame.stdout, Buffer.alloc(0)), [])
  })
})
