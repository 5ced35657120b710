// DNS on real agents: every node answers the same for the same records (dig against each node), unknown
// cluster names are NXDOMAIN, other names fail fast with no upstream, and a forwarder inside the lab works.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { type Cluster, client, startCluster, waitForAlive } from './cluster.ts'
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

  it('answers over TCP and reports itself in status', async () => {
    assert.equal((await dig(c, 2, '+tcp', '+short', 'n3.node.km1s.internal')).trim(), c.nodes[2]?.address)
    const s = await client(at(c, 2)).status()
    assert.ok(s.dns)
    assert.deepEqual(s.dns.listening, ['127.0.0.1:53'])
    assert.ok(s.dns.queries >= 1)
    assert.equal(s.dns.names, 3)
  })
})
