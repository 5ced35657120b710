import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { after, describe, it } from 'node:test'
import fc from 'fast-check'
import { pino } from 'pino'
import {
  BulkServer,
  connectLane,
  decodeOffer,
  encodeOffer,
  type FrameChannel,
  OFFER_BYTES,
  opener,
  RecordReader,
  sealer,
} from '../../../src/artifacts/bulk.ts'

const silent = pino({ level: 'silent' })
const signal = () => AbortSignal.timeout(5_000)

describe('artifacts/bulk: records', () => {
  it('an offer round-trips; a wrong length or port 0 is refused', () => {
    const o = { port: 40_123, ticket: randomBytes(16), secret: randomBytes(32) }
    const back = decodeOffer(encodeOffer(o))
    assert.equal(back?.port, o.port)
    assert.deepEqual(Buffer.from(back?.ticket ?? []), o.ticket)
    assert.deepEqual(Buffer.from(back?.secret ?? []), o.secret)
    assert.equal(decodeOffer(new Uint8Array(OFFER_BYTES - 1)), undefined)
    assert.equal(decodeOffer(new Uint8Array(OFFER_BYTES)), undefined)
  })

  it('sealed frames open in order, whatever the socket chunking', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 3000 }), { maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        (frames, cuts) => {
          const key = randomBytes(32)
          const seal = sealer(key)
          const wire = Buffer.concat(frames.flatMap((f) => seal(f)))
          const open = opener(key)
          const reader = new RecordReader(4000)
          const got: Buffer[] = []
          let off = 0
          let i = 0
          while (off < wire.length) {
            const len = cuts[i++ % cuts.length] as number
            reader.push(wire.subarray(off, off + len), (r) => {
              const f = open(r)
              assert.ok(f)
              got.push(f)
              return true
            })
            off += len
          }
          assert.deepEqual(
            got.map((g) => [...g]),
            frames.map((f) => [...f]),
          )
        },
      ),
    )
  })

  it('a flipped bit, a replayed record or another key fails the check', () => {
    const key = randomBytes(32)
    const seal = sealer(key)
    const [, b1, t1] = seal(Buffer.from('first frame'))
    const r1 = Buffer.concat([b1 as Buffer, t1 as Buffer])
    const flipped = Buffer.from(r1)
    flipped[0] = (flipped[0] ?? 0) ^ 1
    assert.equal(opener(key)(flipped), undefined)
    assert.equal(opener(randomBytes(32))(r1), undefined)
    const open = opener(key)
    assert.deepEqual(open(r1)?.toString(), 'first frame')
    assert.equal(open(r1), undefined, 'the same record again is a replay')
  })

  it('a record longer than the limit is garbage', () => {
    const reader = new RecordReader(100)
    const header = Buffer.alloc(4)
    header.writeUInt32BE(101)
    assert.throws(() => reader.push(header, () => true), /101 bytes/)
  })
})

describe('artifacts/bulk: a lane on loopback', () => {
  const server = new BulkServer({ logger: silent, ticketTtlMs: 1_000 })
  after(() => server.stop())

  async function lane(): Promise<{ puller: FrameChannel; provider: FrameChannel }> {
    let provider: FrameChannel | undefined
    const offer = server.offer(100, (ch) => {
      provider = ch
    })
    assert.ok(offer)
    const puller = await connectLane('127.0.0.1', offer, 1 << 20, signal())
    for (let i = 0; i < 100 && !provider; i++) await new Promise((r) => setTimeout(r, 10))
    assert.ok(provider)
    return { puller, provider }
  }

  it('carries frames both ways, a block-sized answer included', async () => {
    assert.equal(await server.start(), true)
    const { puller, provider } = await lane()
    await puller.write(Uint8Array.of(1, 2, 3), signal())
    assert.deepEqual([...(await provider.read(signal()))], [1, 2, 3])
    const block = randomBytes(1 << 20)
    await provider.write(block, signal())
    assert.deepEqual(Buffer.from(await puller.read(signal())), block)
    assert.equal(server.stats().lanes, 1)
    puller.abort(new Error('done'))
    await assert.rejects(provider.read(signal()))
  })

  it('refuses an unknown ticket and a connection that says nothing, and each ticket works once', async () => {
    const before = server.stats().refused
    const offer = server.offer(100, () => {})
    assert.ok(offer)
    const wrong = Buffer.from(offer)
    wrong[2] = (wrong[2] ?? 0) ^ 0xff
    const closed = (s: net.Socket) => new Promise<void>((resolve) => s.on('close', () => resolve()))
    const a = net.connect(server.port, '127.0.0.1')
    a.on('error', () => {})
    a.write(wrong.subarray(2, 18))
    await closed(a)
    const mute = net.connect(server.port, '127.0.0.1')
    mute.on('error', () => {})
    await closed(mute) // after the 2 s wait for a ticket
    assert.equal(server.stats().refused, before + 2)
    const fresh = server.offer(100, () => {}) // the first one has expired meanwhile (1 s)
    assert.ok(fresh)
    const lanes = server.stats().lanes
    await connectLane('127.0.0.1', fresh, 100, signal())
    for (let i = 0; i < 100 && server.stats().lanes === lanes; i++)
      await new Promise((r) => setTimeout(r, 10))
    assert.equal(server.stats().lanes, lanes + 1)
    const replay = net.connect(server.port, '127.0.0.1')
    replay.on('error', () => {})
    replay.write(Buffer.from(fresh).subarray(2, 18))
    await closed(replay)
    assert.equal(server.stats().refused, before + 3)
  })

  it('a lane that cannot be reached fails fast', async () => {
    const offer = server.offer(100, () => {})
    assert.ok(offer)
    const bad = Buffer.from(offer)
    bad.writeUInt16BE(1, 0) // nothing listens on port 1
    await assert.rejects(connectLane('127.0.0.1', bad, 100, signal(), 500))
  })
})
