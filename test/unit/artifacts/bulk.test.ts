import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { after, describe, it } from 'node:test'
import fc from 'fast-check'
import { pino } from 'pino'
import {
  BulkServer,
  connectLane,
  cpuHasAes,
  decodeOffer,
  encodeOffer,
  type FrameChannel,
  FrameReader,
  laneCiphers,
  OFFER_BYTES,
} from '../../../src/artifacts/bulk.ts'

const silent = pino({ level: 'silent' })
const signal = () => AbortSignal.timeout(5_000)

function framed(frames: Uint8Array[]): Buffer {
  return Buffer.concat(
    frames.flatMap((f) => {
      const h = Buffer.alloc(4)
      h.writeUInt32BE(f.length)
      return [h, f]
    }),
  )
}

describe('artifacts/bulk: offers and frames', () => {
  it('an offer round-trips; a wrong length or port 0 is refused', () => {
    const o = { port: 40_123, ticket: randomBytes(16), secret: randomBytes(32) }
    const back = decodeOffer(encodeOffer(o))
    assert.equal(back?.port, o.port)
    assert.deepEqual(Buffer.from(back?.ticket ?? []), o.ticket)
    assert.deepEqual(Buffer.from(back?.secret ?? []), o.secret)
    assert.equal(decodeOffer(new Uint8Array(OFFER_BYTES - 1)), undefined)
    assert.equal(decodeOffer(new Uint8Array(OFFER_BYTES)), undefined)
  })

  it('frames come out whole and in order, whatever the socket chunking', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 3000 }), { maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        (frames, cuts) => {
          const wire = framed(frames)
          const reader = new FrameReader(4000)
          const got: number[][] = []
          let off = 0
          let i = 0
          while (off < wire.length) {
            const len = cuts[i++ % cuts.length] as number
            reader.push(wire.subarray(off, off + len), (f) => {
              got.push([...f])
            })
            off += len
          }
          assert.deepEqual(
            got,
            frames.map((f) => [...f]),
          )
        },
      ),
    )
  })

  it('a frame longer than the limit, or an empty one, is garbage', () => {
    const header = Buffer.alloc(4)
    header.writeUInt32BE(101)
    assert.throws(() => new FrameReader(100).push(header, () => {}), /101 bytes/)
    assert.throws(() => new FrameReader(100).push(Buffer.alloc(4), () => {}), /0 bytes/)
  })

  it('a block-sized frame given back carries the next one: no new buffer per block', () => {
    const reader = new FrameReader(1 << 20, 2)
    const frames: Buffer[] = []
    const push = () =>
      reader.push(framed([randomBytes(200_000)]), (f) => {
        frames.push(f)
      })
    push()
    const first = frames[0] as Buffer
    reader.release(first)
    push()
    assert.equal(frames[1]?.buffer, first.buffer, 'the released buffer is used again')
    push()
    assert.notEqual(frames[2]?.buffer, first.buffer, 'one still held is not')
    reader.release(Buffer.alloc(70_000)) // not the reader's: ignored
    push()
    assert.notEqual(frames[3]?.byteLength, 70_000)
  })

  it('prefers AES-GCM on CPUs with AES instructions and ChaCha20 elsewhere', () => {
    assert.equal(cpuHasAes('flags\t\t: fpu vme sse2 aes avx2 sha_ni\n'), true)
    assert.equal(cpuHasAes('Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n'), true) // Pi 5
    assert.equal(cpuHasAes('Features\t: fp asimd evtstrm crc32 cpuid\n'), false) // Pi 4
    assert.equal(cpuHasAes('model name\t: aes-like name\n'), false)
    assert.equal(cpuHasAes(''), false)
    assert.match(laneCiphers(true), /^PSK-AES128-GCM-SHA256:/)
    assert.match(laneCiphers(false), /^PSK-CHACHA20-POLY1305:/)
  })
})

describe('artifacts/bulk: a lane on loopback', () => {
  const server = new BulkServer({ logger: silent, ticketTtlMs: 1_000, handshakeMs: 500 })
  after(() => server.stop())

  async function lane(port?: number): Promise<{ puller: FrameChannel; provider: () => FrameChannel }> {
    let provider: FrameChannel | undefined
    const offer = await server.offer(100, (ch) => {
      provider = ch
    })
    assert.ok(offer)
    const o = Buffer.from(offer)
    if (port) o.writeUInt16BE(port, 0)
    const puller = await connectLane('127.0.0.1', o, 1 << 20, signal())
    return {
      puller,
      provider: () => {
        assert.ok(provider)
        return provider
      },
    }
  }

  it('carries frames both ways, a block-sized answer included', async () => {
    assert.equal(await server.start(), true)
    const { puller, provider } = await lane()
    await puller.write(Uint8Array.of(1, 2, 3), signal())
    for (let i = 0; i < 100; i++) if (server.stats().lanes === 0) await new Promise((r) => setTimeout(r, 10))
    assert.deepEqual([...(await provider().read(signal()))], [1, 2, 3])
    const block = randomBytes(1 << 20)
    await provider().write(block, signal())
    const got = await puller.read(signal())
    assert.deepEqual(Buffer.from(got), block)
    puller.release?.(got)
    assert.equal(server.stats().lanes, 1)
    puller.abort(new Error('done'))
    await assert.rejects(provider().read(signal()))
  })

  it('refuses a wrong ticket, a spent one, an expired one and a connection that says nothing', async () => {
    const before = server.stats().refused
    const offer = await server.offer(100, () => {})
    assert.ok(offer)
    const wrong = Buffer.from(offer)
    wrong[2] = (wrong[2] ?? 0) ^ 0xff
    await assert.rejects(connectLane('127.0.0.1', wrong, 100, signal()))
    const mute = net.connect(server.port, '127.0.0.1')
    mute.on('error', () => {})
    await new Promise<void>((resolve) => mute.on('close', () => resolve())) // after the 0.5 s handshake time
    const lanes = server.stats().lanes
    const ok = await connectLane('127.0.0.1', offer, 100, signal())
    for (let i = 0; i < 100 && server.stats().lanes === lanes; i++)
      await new Promise((r) => setTimeout(r, 10))
    assert.equal(server.stats().lanes, lanes + 1, 'the right ticket still works after a wrong one')
    await assert.rejects(connectLane('127.0.0.1', offer, 100, signal()), 'a ticket works once')
    ok.abort(new Error('done'))
    const late = await server.offer(100, () => {})
    assert.ok(late)
    await new Promise((r) => setTimeout(r, 1_100)) // the ticket lives 1 s here
    await assert.rejects(connectLane('127.0.0.1', late, 100, signal()))
    assert.equal(server.stats().refused, before + 4)
  })

  it('a byte changed on the wire ends the lane', async () => {
    // A proxy that flips one bit well after the handshake, inside a block.
    const proxy = net.createServer((client) => {
      const up = net.connect(server.port, '127.0.0.1')
      let seen = 0
      client.on('error', () => {})
      up.on('error', () => client.destroy())
      client.on('data', (d) => up.write(d))
      up.on('data', (d: Buffer) => {
        if (seen < 300_000 && seen + d.length >= 300_000) d[300_000 - seen] = (d[300_000 - seen] ?? 0) ^ 1
        seen += d.length
        client.write(d)
      })
      client.on('close', () => up.destroy())
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve()))
    try {
      const { puller, provider } = await lane((proxy.address() as net.AddressInfo).port)
      await puller.write(Uint8Array.of(9), signal())
      await provider().read(signal())
      await provider()
        .write(randomBytes(1 << 20), signal())
        .catch(() => {})
      await assert.rejects(puller.read(signal()))
    } finally {
      proxy.close()
    }
  })

  it('uses AES-GCM only when both ends prefer it, ChaCha20 when either lacks AES instructions', async () => {
    const aesFirst = laneCiphers(true)
    const chachaFirst = laneCiphers(false)
    for (const [provider, puller, want] of [
      [aesFirst, aesFirst, 'PSK-AES128-GCM-SHA256'],
      [aesFirst, chachaFirst, 'PSK-CHACHA20-POLY1305'],
      [chachaFirst, aesFirst, 'PSK-CHACHA20-POLY1305'],
    ] as const) {
      const s = new BulkServer({ logger: silent, ciphers: provider })
      try {
        assert.equal(await s.start(), true)
        const offer = await s.offer(100, () => {})
        assert.ok(offer)
        const lane = await connectLane('127.0.0.1', offer, 100, signal(), 1_000, puller)
        assert.equal(lane.cipher, want)
        lane.abort(new Error('done'))
      } finally {
        await s.stop()
      }
    }
  })

  it('listens only from the first offer on, and offers nothing once stopped', async () => {
    const s = new BulkServer({ logger: silent })
    assert.equal(s.port, 0, 'no listener before an offer')
    const [a, b] = await Promise.all([s.offer(100, () => {}), s.offer(100, () => {})])
    assert.ok(a && b)
    assert.ok(s.port > 0)
    assert.equal(decodeOffer(a)?.port, s.port)
    assert.equal(decodeOffer(b)?.port, s.port, 'offers made together share one listener')
    await s.stop()
    assert.equal(await s.offer(100, () => {}), undefined)
    assert.equal(await s.start(), false)
  })

  it('a lane that cannot be reached fails fast', async () => {
    const offer = await server.offer(100, () => {})
    assert.ok(offer)
    const bad = Buffer.from(offer)
    bad.writeUInt16BE(1, 0) // nothing listens on port 1
    await assert.rejects(connectLane('127.0.0.1', bad, 100, signal(), 500))
  })
})
