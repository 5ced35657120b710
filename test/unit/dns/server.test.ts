// The DNS server on loopback: answers over UDP and TCP, forwarding with a cache to a fake upstream (a dns2
// server on loopback), failing fast without one, the rate limit, and a flood of random packets.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import { after, before, describe, it } from 'node:test'
import dns2 from 'dns2'
import { pino } from 'pino'
import { DnsServer, RateLimiter } from '../../../src/dns/server.ts'
import { RCODE, TYPE } from '../../../src/dns/wire.ts'
import { buildZone, type ZoneRecord } from '../../../src/dns/zone.ts'

const { Packet } = dns2
const silent = pino({ level: 'silent' })
const P1 = `12D3KooW${'A'.repeat(44)}`
// The 30 s flood runs in the lab against a real agent (test/lab/dns.test.ts); here a short one.
const FLOOD_MS = Number(process.env.KM1S_DNS_FLOOD_MS ?? 5_000)

const many: ZoneRecord[] = Array.from({ length: 40 }, (_, i) => ({
  key: `status/${P1}/big-${i}`,
  value: { workload: 'big', ip: `10.42.1.${i + 2}`, state: 'running' },
  deleted: false,
}))
const records: ZoneRecord[] = [
  { key: `node/${P1}`, value: { name: 'n1', addresses: ['/ip4/198.18.0.11/tcp/4100'] }, deleted: false },
  { key: 'service/web', value: { ip: '10.43.0.10', workload: 'web', ports: [8080] }, deleted: false },
  { key: 'service/big', value: { workload: 'big', headless: true }, deleted: false },
  ...many,
]

async function udp(port: number, name: string, type = 'A') {
  return dns2.UDPClient({ dns: '127.0.0.1', port, timeout: 3_000, retryOverTCP: false })(name, type)
}

async function tcp(port: number, name: string, type = 'A') {
  return dns2.TCPClient({ dns: '127.0.0.1', port })(name, type)
}

function sendRaw(port: number, packets: Buffer[]): Promise<void> {
  const s = dgram.createSocket('udp4')
  return new Promise((resolve) => {
    let left = packets.length
    for (const p of packets)
      s.send(p, port, '127.0.0.1', () => {
        if (--left === 0) s.close(() => resolve())
      })
  })
}

describe('dns server', () => {
  let upstreamHits = 0
  let upstream: ReturnType<typeof dns2.createServer>
  let upstreamPort = 0
  let server: DnsServer
  let port = 0

  before(async () => {
    upstream = dns2.createServer({
      udp: true,
      handle: (request, send) => {
        upstreamHits++
        const response = Packet.createResponseFromRequest(request)
        const [q] = request.questions
        if (q?.name.toLowerCase() === 'example.test')
          response.answers.push(
            Packet.createResourceFromQuestion(q, { type: Packet.TYPE.A, ttl: 60, address: '192.0.2.1' }),
          )
        else response.header.rcode = RCODE.NXDOMAIN
        send(response)
      },
    })
    await upstream.listen({ udp: { port: 0, address: '127.0.0.1' } })
    upstreamPort = (upstream.addresses().udp as { port: number }).port
    server = new DnsServer({
      port: 0,
      addresses: ['127.0.0.1'],
      upstreams: [{ address: '127.0.0.1', port: upstreamPort }],
      rateLimit: null,
      logger: silent,
    })
    server.setZone(buildZone(records))
    await server.start()
    port = server.listening()[0]?.port ?? 0
    assert.ok(port > 0)
  })

  after(async () => {
    await server.stop()
    await upstream.close()
  })

  it('answers cluster names over UDP and TCP', async () => {
    const a = await udp(port, 'web.km1s.internal')
    assert.deepEqual(
      a.answers.map((x) => x.address),
      ['10.43.0.10'],
    )
    const t = await tcp(port, 'n1.node.km1s.internal')
    assert.deepEqual(
      t.answers.map((x) => x.address),
      ['198.18.0.11'],
    )
    const nx = await udp(port, 'nope.km1s.internal')
    assert.equal(nx.header.rcode, RCODE.NXDOMAIN)
  })

  it('sends a big answer over UDP truncated, and whole over TCP', async () => {
    const u = await udp(port, 'big.km1s.internal')
    assert.equal(u.header.tc, 1)
    assert.equal(u.answers.length, 0)
    const t = await tcp(port, 'big.km1s.internal')
    assert.equal(t.answers.length, 40)
  })

  it('forwards other names, then answers them from its cache', async () => {
    const before = upstreamHits
    const first = await udp(port, 'Example.test')
    assert.deepEqual(
      first.answers.map((x) => x.address),
      ['192.0.2.1'],
    )
    assert.equal(first.questions[0]?.name, 'Example.test')
    const second = await udp(port, 'EXAMPLE.test')
    assert.deepEqual(
      second.answers.map((x) => x.address),
      ['192.0.2.1'],
    )
    assert.equal(second.questions[0]?.name, 'EXAMPLE.test')
    assert.equal(upstreamHits - before, 1)
    const nx = await udp(port, 'missing.test')
    assert.equal(nx.header.rcode, RCODE.NXDOMAIN)
  })

  it('follows a new zone at once', async () => {
    server.setZone(
      buildZone([
        ...records,
        { key: 'service/api', value: { ip: '10.43.0.20', ports: [80] }, deleted: false },
      ]),
    )
    const a = await udp(port, 'api.km1s.internal')
    assert.deepEqual(
      a.answers.map((x) => x.address),
      ['10.43.0.20'],
    )
    server.setZone(buildZone(records))
  })

  it('fails fast when no upstream answers, and keeps answering cluster names', async () => {
    const dead = dgram.createSocket('udp4')
    await new Promise<void>((r) => dead.bind(0, '127.0.0.1', r))
    const deadPort = dead.address().port
    dead.close()
    const offline = new DnsServer({
      port: 0,
      addresses: ['127.0.0.1'],
      upstreams: [{ address: '127.0.0.1', port: deadPort }],
      rateLimit: null,
      logger: silent,
    })
    offline.setZone(buildZone(records))
    await offline.start()
    try {
      const p = offline.listening()[0]?.port ?? 0
      const t0 = Date.now()
      const first = await udp(p, 'example.test')
      assert.equal(first.header.rcode, RCODE.SERVFAIL)
      assert.ok(Date.now() - t0 < 2_500)
      const t1 = Date.now()
      const second = await udp(p, 'other.test')
      assert.equal(second.header.rcode, RCODE.SERVFAIL)
      assert.ok(Date.now() - t1 < 500, 'the second failure is immediate')
      const cluster = await udp(p, 'web.km1s.internal')
      assert.equal(cluster.answers[0]?.address, '10.43.0.10')
    } finally {
      await offline.stop()
    }
  })

  it('stops while a forwarded question still waits, and drops its late answer quietly', async () => {
    // An upstream that hears and never answers: the question is still pending when the server stops, and
    // stopping answers it with SERVFAIL for a socket that is already closed.
    const mute = dgram.createSocket('udp4')
    await new Promise<void>((r) => mute.bind(0, '127.0.0.1', r))
    const slow = new DnsServer({
      port: 0,
      addresses: ['127.0.0.1'],
      upstreams: [{ address: '127.0.0.1', port: mute.address().port }],
      rateLimit: null,
      logger: silent,
    })
    slow.setZone(buildZone(records))
    await slow.start()
    const rejections: unknown[] = []
    const onRejection = (reason: unknown) => rejections.push(reason)
    process.on('unhandledRejection', onRejection)
    try {
      const q = new Packet()
      q.questions.push(new Packet.Question('example.test', TYPE.A, 1))
      await sendRaw(slow.listening()[0]?.port ?? 0, [q.toBuffer()])
      for (let i = 0; i < 100 && slow.stats().forwarder.pending === 0; i++)
        await new Promise((r) => setTimeout(r, 10))
      assert.equal(slow.stats().forwarder.pending, 1)
      await slow.stop()
      await new Promise((r) => setTimeout(r, 50))
      assert.deepEqual(rejections, [])
    } finally {
      process.off('unhandledRejection', onRejection)
      mute.close()
    }
  })

  it('listens on an address it could not bind at start once it can, without another call', async () => {
    const blocker = dgram.createSocket('udp4')
    await new Promise<void>((r) => blocker.bind(0, '127.0.0.1', r))
    const taken = blocker.address().port
    const late = new DnsServer({
      port: taken,
      addresses: ['127.0.0.1'],
      upstreams: [],
      rateLimit: null,
      logger: silent,
      retryMs: 50,
    })
    late.setZone(buildZone(records))
    await late.start()
    try {
      assert.deepEqual(late.missing(), ['127.0.0.1'])
      await new Promise<void>((r) => blocker.close(() => r()))
      for (let i = 0; i < 100 && late.missing().length > 0; i++) await new Promise((r) => setTimeout(r, 20))
      assert.deepEqual(late.missing(), [])
      const a = await udp(taken, 'web.km1s.internal')
      assert.equal(a.answers[0]?.address, '10.43.0.10')
    } finally {
      await late.stop()
    }
  })

  it('limits each source to its rate', () => {
    let now = 0
    const limiter = new RateLimiter(10, 20, () => now)
    let allowed = 0
    for (let i = 0; i < 100; i++) if (limiter.allow('a')) allowed++
    assert.equal(allowed, 20)
    assert.ok(limiter.allow('b'))
    now += 1_000
    allowed = 0
    for (let i = 0; i < 100; i++) if (limiter.allow('a')) allowed++
    assert.equal(allowed, 10)
  })

  it('answers FORMERR to a malformed question and nothing to a response or a runt', async () => {
    const s = dgram.createSocket('udp4')
    const replies: Buffer[] = []
    s.on('message', (m) => replies.push(m))
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', r))
    const send = (b: Buffer) => new Promise<void>((r) => s.send(b, port, '127.0.0.1', () => r()))
    await send(Buffer.from([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 0x61])) // truncated name
    await send(Buffer.from([0, 2, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0])) // a response
    await send(Buffer.from([0, 3, 1])) // a runt
    await new Promise((r) => setTimeout(r, 200))
    s.close()
    assert.equal(replies.length, 1)
    assert.equal((replies[0]?.[3] ?? 0) & 0x0f, RCODE.FORMERR)
  })

  it(`keeps answering through ${FLOOD_MS / 1000} s of random packets`, {
    timeout: FLOOD_MS + 30_000,
  }, async () => {
    const valid = new Packet()
    valid.questions.push(new Packet.Question('web.km1s.internal', TYPE.A, 1))
    const template = valid.toBuffer()
    const end = Date.now() + FLOOD_MS
    let sent = 0
    while (Date.now() < end) {
      const batch: Buffer[] = []
      for (let i = 0; i < 200; i++) {
        const kind = i % 4
        if (kind === 0) batch.push(randomBytes(1 + (i % 700)))
        else if (kind === 1)
          batch.push(Buffer.concat([template.subarray(0, 12 + (i % 20)), randomBytes(i % 30)]))
        else if (kind === 2) {
          const b = Buffer.from(template)
          b[12 + (i % (b.length - 12))] = i & 0xff
          batch.push(b)
        } else batch.push(Buffer.concat([template, randomBytes(2000)]))
      }
      await sendRaw(port, batch)
      sent += batch.length
      await new Promise((r) => setTimeout(r, 5))
    }
    const a = await udp(port, 'web.km1s.internal')
    assert.equal(a.answers[0]?.address, '10.43.0.10')
    const stats = server.stats()
    assert.ok(stats.queries >= sent / 2, `${stats.queries} of ${sent} packets seen`)
    assert.ok(stats.formerr + stats.dropped > 0)
  })
})
