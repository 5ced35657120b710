// The node issue, end to end: real agents in network namespaces, driven through the CLI and the API client.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import {
  agentArgs,
  aliveNames,
  type Cluster,
  client,
  KM1S,
  km1s,
  km1sOk,
  listenAddr,
  startAgent,
  startCluster,
  waitForAlive,
} from './cluster.ts'
import { waitFor } from './lab.ts'

const isRoot = process.getuid?.() === 0

describe('mesh: five agents on a LAN', { skip: !isRoot && 'the lab needs root' }, () => {
  let c: Cluster

  before(async () => {
    c = await startCluster(5, { name: 'mesh' })
  })
  after(async () => {
    await c?.lab.down()
  })

  it('each node lists the other four as alive, with arch, CPUs and memory', async () => {
    await waitForAlive(c.nodes, c.nodes)
    const n3 = c.nodes[2]
    assert.ok(n3)
    const listed = JSON.parse(await km1sOk(n3, ['nodes', '--json'])) as Array<Record<string, unknown>>
    assert.equal(listed.length, 5)
    for (const n of listed) {
      for (const field of [
        'name',
        'id',
        'state',
        'addresses',
        'arch',
        'cpus',
        'memory',
        'version',
        'uptime',
      ]) {
        assert.ok(field in n, `km1s nodes --json has ${field}`)
      }
      assert.equal(n.state, 'alive')
      assert.ok((n.cpus as number) >= 1 && (n.memory as number) > 0)
      const addrs = n.addresses as string[]
      assert.ok(
        addrs.length > 0 && addrs.every((a) => !a.includes('/127.')),
        `no loopback announced: ${addrs}`,
      )
    }
    const table = await km1sOk(n3, ['nodes'])
    assert.match(table, /^NAME\s+ID\s+STATE\s+ADDRESSES\s+ARCH\s+CPUS\s+MEMORY\s+VERSION\s+UPTIME/)
    for (const node of c.nodes) assert.match(table, new RegExp(`^${node.name}\\b.*\\balive\\b`, 'm'))
  })

  it('keeps one connection per pair', async () => {
    for (const node of c.nodes) {
      const s = await client(node).status()
      assert.equal(s.mesh.connectedPeers, 4, `${node.name} is connected to 4 peers`)
    }
  })

  it('refuses a second agent on the same data directory with a clear error', async () => {
    const n1 = c.nodes[0]
    assert.ok(n1)
    const r = await n1.exec(
      [KM1S, '--data-dir', n1.dataDir, 'agent', '--listen', '/ip4/127.0.0.1/tcp/4999'],
      { timeoutMs: 15_000 },
    )
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /Another km1s agent \(pid \d+\) is already running on /)
    assert.ok((await client(n1).health()).ok, 'the first agent still answers')
  })

  it('a node restarted on the same data directory is reconnected without mDNS', async () => {
    const n2 = c.nodes[1]
    assert.ok(n2)
    const id = (await client(n2).health()).id
    const t0 = Date.now()
    await n2.kill('SIGTERM')
    assert.ok(Date.now() - t0 < 2_500, `SIGTERM stopped the agent in ${Date.now() - t0} ms`)
    // Without mDNS the restarted node neither asks nor answers: only the peer books bring it back.
    await startAgent(n2, { extraArgs: [...agentArgs(n2), '--no-mdns'] })
    assert.equal((await client(n2).health()).id, id, 'same identity after restart')
    await waitForAlive(c.nodes, c.nodes, 15_000)
  })

  it('a node killed with -9 leaves the alive state on the others', async () => {
    const n4 = c.nodes[3]
    assert.ok(n4)
    await n4.kill('SIGKILL')
    const others = c.nodes.filter((n) => n !== n4)
    await waitForAlive(others, others, 10_000)
    await waitFor(
      'n4 to be dead everywhere',
      async () => {
        for (const node of others) {
          const v = (await client(node).nodes()).find((n) => n.name === n4.name)
          if (v?.state !== 'dead') throw new Error(`${node.name} sees n4 ${v?.state}`)
        }
        return true
      },
      { timeoutMs: 10_000 },
    )
    await startAgent(n4, { extraArgs: agentArgs(n4) })
    await waitForAlive(c.nodes, c.nodes)
  })

  it('a node of another cluster sees nobody, nobody lists it, and its log says why', async () => {
    const members = [...c.nodes]
    const outsider = await c.lab.addNode()
    await km1sOk(outsider, ['init'])
    const n1 = c.nodes[0]
    assert.ok(n1)
    await startAgent(outsider, { extraArgs: ['--peer', listenAddr(n1)] })
    await waitFor('the outsider to log why it sees nobody', async () => {
      return outsider.log().includes('probably a node of another km1s cluster')
    })
    assert.deepEqual(await aliveNames(outsider), [outsider.name])
    const s = await client(outsider).status()
    assert.equal(s.mesh.connectedPeers, 0)
    assert.ok(s.mesh.handshakeFailures > 0)
    for (const node of members) {
      const names = (await client(node).nodes()).map((n) => n.name)
      assert.ok(!names.includes(outsider.name), `${node.name} does not list the outsider`)
    }
    const status = await km1sOk(outsider, ['status'])
    assert.match(status, /handshake failures: another cluster\?/)
    await outsider.stop()
  })

  it('errors are one sentence on stderr with a non-zero exit', async () => {
    const n1 = c.nodes[0]
    assert.ok(n1)
    const bad = await km1s(n1, ['join', 'km1sabcdefg'])
    assert.equal(bad.code, 1)
    assert.match(bad.stderr.trim(), /^The join token is damaged \([^)]+\); [^\n]+\.$/)
    const flag = await km1s(n1, ['nodes', '--bogus'])
    assert.notEqual(flag.code, 0)
    assert.match(flag.stderr, /unknown option '--bogus'/)
    const noAgent = await km1s(n1, ['--socket', '/tmp/km1s-no-such.sock', 'nodes'])
    assert.equal(noAgent.code, 1)
    assert.match(noAgent.stderr.trim(), /^No km1s agent is running at \/tmp\/km1s-no-such\.sock; .+\.$/)
    assert.ok(!noAgent.stderr.includes('    at '), 'no stack trace without --debug')
  })
})
