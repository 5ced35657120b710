// The replicated-state issue, end to end: five real agents, labels written through the CLI from any node,
// a split with writes on both sides, kill -9 after a write, a hostile member, forgetting a dead node.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  agentArgs,
  type Cluster,
  client,
  km1sOk,
  listenAddr,
  ROOT,
  startAgent,
  startCluster,
  waitForAlive,
} from './cluster.ts'
import { type LabNode, waitFor } from './lab.ts'

const isRoot = process.getuid?.() === 0

async function labelsOn(node: LabNode, of: LabNode): Promise<Record<string, string> | undefined> {
  return (await client(node).nodes()).find((n) => n.name === of.name)?.labels
}

async function digests(nodes: LabNode[]): Promise<string[]> {
  return Promise.all(nodes.map(async (n) => (await client(n).status()).state.digest))
}

async function waitForSameDigest(nodes: LabNode[], timeoutMs: number): Promise<string> {
  return waitFor(
    `identical digests on ${nodes.map((n) => n.name).join(',')}`,
    async () => {
      const ds = await digests(nodes)
      if (new Set(ds).size !== 1) throw new Error(`digests ${ds.join(' ')}`)
      return ds[0]
    },
    { timeoutMs, intervalMs: 200 },
  )
}

describe('state: five agents share one replicated map', { skip: !isRoot && 'the lab needs root' }, () => {
  let c: Cluster
  let n: LabNode[]

  before(async () => {
    c = await startCluster(5, { name: 'state' })
    n = [...c.nodes]
    await waitForAlive(n, n)
  })
  after(async () => {
    await c?.lab.down()
  })

  const node = (i: number): LabNode => {
    const x = n[i - 1]
    assert.ok(x, `node ${i}`)
    return x
  }

  it('a label written on one node reaches all', async () => {
    const out = await km1sOk(node(1), ['label', node(3).name, 'zone=garage', 'disk=ssd'])
    assert.match(out, /^n3: (disk=ssd zone=garage|zone=garage disk=ssd)$/m)
    for (const x of n) {
      await waitFor(
        `${x.name} to see n3's labels`,
        async () => (await labelsOn(x, node(3)))?.zone === 'garage',
        {
          timeoutMs: 5_000,
        },
      )
    }
    await km1sOk(node(4), ['label', node(3).name, 'disk-'])
    for (const x of n) {
      await waitFor(`${x.name} to see disk removed`, async () => {
        const labels = await labelsOn(x, node(3))
        return labels?.zone === 'garage' && !('disk' in labels)
      })
    }
    const table = await km1sOk(node(2), ['nodes'])
    assert.match(table, /^n3\b.*zone=garage/m)
  })

  it('after a 2|3 split with writes on both sides, healing leaves identical digests everywhere', async () => {
    const [a1, a2, b1, b2, b3] = [node(1), node(2), node(3), node(4), node(5)]
    await c.lab.partition([a1, a2], [b1, b2, b3])
    await waitForAlive([a1, a2], [a1, a2], 15_000)
    await waitForAlive([b1, b2, b3], [b1, b2, b3], 15_000)
    // The same key on both sides, and different keys on each side.
    await km1sOk(a1, ['label', b2.name, 'side=a'])
    await km1sOk(b2, ['label', b2.name, 'side=b'])
    await km1sOk(a2, ['label', a1.name, 'written=on-a'])
    await km1sOk(b3, ['label', b3.name, 'written=on-b'])
    const sideA = await waitForSameDigest([a1, a2], 10_000)
    const sideB = await waitForSameDigest([b1, b2, b3], 10_000)
    assert.notEqual(sideA, sideB, 'the split kept the sides apart')
    await c.lab.heal()
    const healed = await waitForSameDigest(n, 40_000)
    assert.ok(healed)
    const seen = await Promise.all(n.map((x) => labelsOn(x, b2)))
    assert.equal(
      new Set(seen.map((l) => l?.side)).size,
      1,
      `one winner for n4's side label: ${JSON.stringify(seen)}`,
    )
    for (const x of n) {
      assert.equal((await labelsOn(x, a1))?.written, 'on-a')
      assert.equal((await labelsOn(x, b3))?.written, 'on-b')
    }
    await waitForAlive(n, n, 20_000)
  })

  it('a label is on disk when km1s label returns: kill -9 right after, restart alone, it is there', async () => {
    const x = node(2)
    await km1sOk(x, ['label', x.name, 'durable=yes'])
    await x.kill('SIGKILL')
    // Alone, so the label cannot come back from a peer: it must have been on disk.
    const others = n.filter((o) => o !== x)
    await c.lab.partition([x], others)
    await startAgent(x, { extraArgs: agentArgs(x) })
    assert.equal((await labelsOn(x, x))?.durable, 'yes')
    await c.lab.heal()
    await waitForAlive(n, n, 20_000)
  })

  it('a hostile member sending forged and garbage records changes nothing on honest nodes', async () => {
    const victim = node(1)
    const victimId = (await client(victim).health()).id
    await waitForSameDigest(n, 20_000)
    const before = await digests(n)
    const labelsBefore = await labelsOn(node(3), victim)
    const hostile = await c.lab.addNode()
    await km1sOk(hostile, ['join', c.token])
    const r = await hostile.exec(
      [
        join(ROOT, 'node_modules/node/bin/node'),
        join(ROOT, 'test/lab/hostile.ts'),
        hostile.dataDir,
        listenAddr(hostile),
        victimId,
      ],
      { timeoutMs: 60_000 },
    )
    assert.equal(r.code, 0, `the hostile peer ran: ${r.stderr}`)
    assert.match(r.stdout, /sent everything/)
    // Give honest nodes time to receive, gossip and sync whatever got through.
    await new Promise((res) => setTimeout(res, 1_500))
    assert.deepEqual(await digests(n), before, 'no honest node merged anything')
    assert.deepEqual(await labelsOn(node(3), victim), labelsBefore)
    for (const x of n) {
      assert.equal((await client(x).nodes()).find((v) => v.id === victimId)?.name, victim.name)
      assert.ok((await client(x).health()).ok, `${x.name} is still up`)
    }
    const dropped: Record<string, number> = {}
    for (const x of n) {
      for (const [reason, count] of Object.entries((await client(x).status()).state.dropped)) {
        dropped[reason] = (dropped[reason] ?? 0) + count
      }
    }
    for (const reason of [
      'forged-owner',
      'bad-signature',
      'invalid-value',
      'unknown-key',
      'clock-drift',
      'garbage',
    ]) {
      assert.ok((dropped[reason] ?? 0) > 0, `honest nodes counted ${reason}: ${JSON.stringify(dropped)}`)
    }
    const status = await km1sOk(node(3), ['status'])
    assert.match(status, /^Dropped:\s+.*\d+ forged-owner/m)
  })

  it('a dead node can be forgotten from any node; it comes back when it starts again', async (t) => {
    const t0 = Date.now()
    const gone = node(5)
    await gone.kill('SIGKILL')
    const rest = n.filter((x) => x !== gone)
    await waitFor(
      'n5 to be dead on n1',
      async () => (await client(node(1)).nodes()).find((v) => v.name === gone.name)?.state === 'dead',
      {
        timeoutMs: 10_000,
      },
    )
    t.diagnostic(`dead after ${Date.now() - t0} ms`)
    const out = await km1sOk(node(1), ['forget', gone.name])
    assert.match(out, /^Forgot n5 \(12D3KooW\w+\)\.$/m)
    for (const x of rest) {
      await waitFor(
        `${x.name} to forget n5`,
        async () => !(await client(x).nodes()).some((v) => v.name === gone.name),
        {
          timeoutMs: 10_000,
        },
      )
    }
    t.diagnostic(`forgotten everywhere after ${Date.now() - t0} ms`)
    await startAgent(gone, { extraArgs: agentArgs(gone) })
    try {
      await waitForAlive(n, n, 20_000)
    } catch (err) {
      for (const x of n) {
        const s = await client(x).status()
        t.diagnostic(
          `${x.name}: ${s.mesh.connectedPeers} peers, digest ${s.state.digest}, ${s.state.records} records, ${(await client(x).nodes()).map((v) => `${v.name}:${v.state}:${v.lastHeard}`).join(' ')}`,
        )
      }
      t.diagnostic(gone.log().split('\n').slice(-30).join('\n'))
      throw err
    }
    t.diagnostic(`back after ${Date.now() - t0} ms`)
  })
})
