// DNS on real agents: every node answers the same for the same records (dig against each node), unknown
// cluster names are NXDOMAIN, other names fail fast with no upstream, and a forwarder inside the lab works.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type Cluster, client, ROOT, startCluster, waitForAlive } from './cluster.ts'
import type { LabNode } from './lab.ts'

function at(c: Cluster, i: number): LabNode {
  const n = c.nodes[i]
  assert.ok(n)
  return n
}

async function dig(c: Cluster, node: number, ...args: string[]): Promise<string> {
  const r = await at(c, node).exec(['dig', '@127.0.0.1', '+tries=1', '+time=3', ...args], {
    timeoutMs: 10_000,
  })
  assert.equal(r.code, 0, r.stderr)
  return r.stdout
}

const status = (out: string) => /status: ([A-Z]+)/.exec(out)?.[1]
const NODE_BIN = join(ROOT, 'node_modules', 'node', 'bin', 'node')
const FLOOD_MS = Number(process.env.KM1S_DNS_FLOOD_MS ?? 30_000)

describe('dns on every node', { timeout: 120_000 }, () => {
  let c: Cluster

  before(async () => {
    c = await startCluster(3, { name: 'dns' })
    await waitForAlive(c.nodes, c.nodes)
  })

  after(async () => {
    await c?.lab.down()
  })

  it('gives identical answers for every node name on every node', async () => {
    const names = c.nodes.map((n) => `${n.name}.node.km1s.internal`)
    const answers = await Promise.all(
      c.nodes.map(async (_, i) => Promise.all(names.map((name) => dig(c, i, '+short', name)))),
    )
    for (const [i, node] of c.nodes.entries()) {
      assert.deepEqual(answers[i], answers[0], `${node.name} answers like ${c.nodes[0]?.name}`)
    }
    assert.deepEqual(
      answers[0]?.map((a) => a.trim()),
      c.nodes.map((n) => n.address),
    )
  })

  it('says NXDOMAIN for unknown cluster names and SERVFAIL at once without an upstream', async () => {
    assert.equal(status(await dig(c, 1, 'nobody.node.km1s.internal')), 'NXDOMAIN')
    const t0 = Date.now()
    assert.equal(status(await dig(c, 1, 'example.org')), 'SERVFAIL')
    assert.ok(Date.now() - t0 < 2_000)
    assert.equal(status(await dig(c, 1, 'ANY', 'n1.node.km1s.internal')), 'REFUSED')
  })

  it(`keeps answering through ${FLOOD_MS / 1000} s of random and mangled packets at it`, {
    timeout: 90_000,
  }, async () => {
    // Random bytes, truncated and bit-flipped queries and oversized ones, from inside n2's namespace.
    const flood = `
      const dgram = require('node:dgram'), { randomBytes } = require('node:crypto')
      const s = dgram.createSocket('udp4')
      const q = Buffer.from('00010100000100000000000002' + '6e3204' + '6e6f6465046b6d31730869' + '6e7465726e616c0000010001', 'hex')
      const end = Date.now() + ${FLOOD_MS}
      let sent = 0
      const tick = () => {
        if (Date.now() > end) return s.close(() => console.log(sent))
        for (let i = 0; i < 100; i++) {
          const k = i % 4
          const b = k === 0 ? randomBytes(1 + (i * 7) % 600)
            : k === 1 ? Buffer.concat([q.subarray(0, 12 + (i % 20)), randomBytes(i % 30)])
            : k === 2 ? (() => { const c = Buffer.from(q); c[12 + (i % (c.length - 12))] = i; return c })()
            : Buffer.concat([q, randomBytes(2000)])
          s.send(b, 53, '127.0.0.1')
          sent++
        }
        setTimeout(tick, 5)
      }
      tick()`
    const r = await at(c, 1).exec([NODE_BIN, '-e', flood], { timeoutMs: FLOOD_MS + 30_000 })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(Number(r.stdout) > 1000, `${r.stdout.trim()} packets sent`)
    assert.equal((await dig(c, 1, '+short', 'n1.node.km1s.internal')).trim(), at(c, 0).address)
    const s = await client(at(c, 1)).status()
    assert.ok(s.dns && s.dns.formerr + s.dns.dropped + s.dns.refused > 0, JSON.stringify(s.dns))
  })

  it('answers over TCP and reports itself in status', async () => {
    assert.equal((await dig(c, 2, '+tcp', '+short', 'n3.node.km1s.internal')).trim(), c.nodes[2]?.address)
    const s = await client(at(c, 2)).status()
    assert.ok(s.dns)
    assert.deepEqual(s.dns.listening, ['127.0.0.1:53'])
    assert.ok(s.dns.queries >= 1)
    assert.equal(s.dns.names, 3)
  })
})
