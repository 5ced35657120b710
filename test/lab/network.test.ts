// The overlay as a user meets it: real agents in lab nodes with the oci runtime, containers made with
// `km1s containers create`, reached across nodes by IP (ping and HTTP) through WireGuard; wireguard-go
// killed and restarted; an agent restart; two nodes claiming one subnet.
import assert from 'node:assert/strict'
import { existsSync, readFileSync, realpathSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { StatusView } from '../../src/api/index.ts'
import { instanceId } from '../../src/runtime/names.ts'
import {
  agentArgs,
  km1s,
  km1sOk,
  listenAddr,
  ROOT,
  setupCluster,
  startAgent,
  waitForAlive,
} from './cluster.ts'
import { createLab, type Lab, type LabNode, waitFor } from './lab.ts'
import { isRoot } from './runtime-fixture.ts'

const NODE_BIN = realpathSync(join(ROOT, 'node_modules', 'node', 'bin', 'node'))
const PORT = 8080
// Answers every request with the container's host name (its name).
const SERVER = `require('http').createServer((q,s)=>s.end(require('os').hostname())).listen(${PORT})`
const FETCH = `fetch(process.argv[1],{signal:AbortSignal.timeout(3000)}).then(r=>r.text()).then(t=>process.stdout.write(t),e=>{console.error(String(e.cause??e));process.exit(1)})`

async function status(node: LabNode): Promise<StatusView> {
  return JSON.parse(await km1sOk(node, ['status', '--json'])) as StatusView
}

async function ipOf(node: LabNode, container: string): Promise<string> {
  const rows = JSON.parse(await km1sOk(node, ['containers', '--json'])) as Array<{ name: string; ip: string }>
  const row = rows.find((r) => r.name === container)
  assert.ok(row, `${container} on ${node.name}`)
  return row.ip
}

const instances = new Map<string, string>()

/** Runs `cmd` in the network namespace of `container` on `node`, as root (ping needs CAP_NET_RAW). */
async function inContainer(node: LabNode, container: string, cmd: string[], timeoutMs = 10_000) {
  // The peer id does not change across restarts: ask once per node.
  let inst = instances.get(node.name)
  if (inst === undefined) {
    inst = instanceId((await status(node)).id)
    instances.set(node.name, inst)
  }
  return node.exec(['nsenter', `--net=/run/netns/km1s-${inst}-${container}`, ...cmd], { timeoutMs })
}

async function httpGet(node: LabNode, container: string, ip: string): Promise<string> {
  const r = await inContainer(node, container, [NODE_BIN, '-e', FETCH, `http://${ip}:${PORT}/`])
  if (r.code !== 0) throw new Error(`GET ${ip} from ${container}@${node.name}: ${r.code} ${r.stderr.trim()}`)
  return r.stdout
}

async function ping(node: LabNode, container: string, ip: string): Promise<void> {
  const r = await inContainer(node, container, ['ping', '-c', '2', '-i', '0.2', '-W', '2', '-q', ip])
  if (r.code !== 0) throw new Error(`ping ${ip} from ${container}@${node.name}: ${r.stdout}${r.stderr}`)
}

function reach(node: LabNode, container: string, ip: string, expect: string, timeoutMs = 20_000) {
  return waitFor(
    `${container}@${node.name} to reach ${expect} at ${ip}`,
    async () => (await httpGet(node, container, ip)) === expect,
    { timeoutMs, intervalMs: 200 },
  )
}

describe('overlay network', { skip: isRoot ? false : 'needs root' }, () => {
  let lab: Lab
  let nodes: LabNode[] = []
  const started: LabNode[] = []
  const n = (i: number) => nodes[i - 1] as LabNode
  const sockets: string[] = []

  async function createServer(node: LabNode, name: string): Promise<string> {
    const file = join(lab.dir, `${name}.json`)
    await writeFile(
      file,
      JSON.stringify({
        name,
        artifactDir: dirname(NODE_BIN),
        processes: [{ name: 'main', args: ['/app/node', '--max-old-space-size=24', '-e', SERVER] }],
      }),
    )
    await km1sOk(node, ['containers', 'create', '-f', file])
    return ipOf(node, name)
  }

  before(async () => {
    lab = await createLab({ nodes: 5, name: 'overlay' })
    nodes = lab.nodes
    await setupCluster(nodes)
    // n5 stays off until the conflict test.
    await Promise.all(
      nodes.slice(0, 4).map(async (node) => {
        await startAgent(node, { runtime: 'oci', extraArgs: agentArgs(node) })
        started.push(node)
      }),
    )
    await waitForAlive(nodes.slice(0, 4), nodes.slice(0, 4))
    // Nodes that start together claim before they hear each other's claims, and a node's first choice is a
    // hash of its peer id: two of four pick the same /24 in about one lab in forty (a CI run failed so). The
    // later claim then moves (the conflict test below); these tests start from settled subnets.
    await waitFor(
      'four nodes on four subnets',
      async () => {
        const subnets = (await Promise.all(nodes.slice(0, 4).map(status))).map((v) => v.network?.subnet)
        return subnets.every(Boolean) && new Set(subnets).size === 4
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    )
    for (const node of nodes.slice(0, 4)) {
      const s = await status(node)
      if (s.network) sockets.push(`/var/run/wireguard/${s.network.interface}.sock`)
    }
    await Promise.all(nodes.slice(0, 4).map((node) => createServer(node, `web${node.index}`)))
  })

  after(async () => {
    try {
      for (const node of started) {
        const rows = JSON.parse((await km1s(node, ['containers', '--json'])).stdout || '[]') as Array<{
          name: string
        }>
        for (const r of rows) await km1s(node, ['containers', 'rm', r.name])
        await node.stop()
      }
    } finally {
      await lab?.down()
    }
    // wireguard-go removes its UAPI socket when it ends: a socket left says one is still running.
    for (const s of sockets) assert.ok(!existsSync(s), `${s} is left`)
  })

  it('gives every node its own /24 of 10.42.0.0/16, with the bridge, the MTU and one WireGuard peer per node', async () => {
    const views = await Promise.all(nodes.slice(0, 4).map(status))
    const subnets = views.map((v) => v.network?.subnet)
    assert.equal(new Set(subnets).size, 4, subnets.join(' '))
    for (const v of views) {
      assert.ok(v.network, `${v.name} runs the network`)
      assert.match(v.network.subnet, /^10\.42\.\d+\.0\/24$/)
      assert.equal(v.network.mtu, 1420)
      assert.equal(v.network.kind, 'wireguard-go', 'this kernel has no WireGuard')
      assert.equal(v.network.peers.length, 3)
    }
    const link = await n(1).exec(['ip', '-j', 'link', 'show', 'dev', 'km1s0'])
    assert.equal(JSON.parse(link.stdout)[0].mtu, 1420)
    const fwd = await n(1).exec(['cat', '/proc/sys/net/ipv4/ip_forward'])
    assert.equal(fwd.stdout.trim(), '1')
    const nft = await n(1).exec(['nft', 'list', 'table', 'inet', 'km1s'])
    assert.match(
      nft.stdout,
      new RegExp(`ip saddr ${views[0]?.network?.subnet.replace(/\./g, '\\.')} .*masquerade`),
    )
    const ip = await ipOf(n(1), 'web1')
    assert.ok(ip.startsWith(views[0]?.network?.subnet.split('.').slice(0, 3).join('.') as string), ip)
  })

  it('a container on n1 reaches a container on n4 by IP: ping and HTTP', async () => {
    const ip4 = await ipOf(n(4), 'web4')
    await reach(n(1), 'web1', ip4, 'web4')
    await ping(n(1), 'web1', ip4)
    // And the other way, and between two other nodes.
    await reach(n(4), 'web4', await ipOf(n(1), 'web1'), 'web1')
    await reach(n(2), 'web2', await ipOf(n(3), 'web3'), 'web3')
  })

  it("a container resolves cluster names through its node's DNS on the bridge (search km1s.internal)", async () => {
    // c-ares (resolve4) asks the nameserver of the container's resolv.conf: its node's bridge .1.
    const js =
      "const d=require('dns').promises;Promise.all([d.resolve4('n2.node.km1s.internal'),d.lookup('n3.node')])" +
      ".then(([a,b])=>console.log(a.join()+' '+b.address),e=>{console.error(String(e));process.exit(1)})"
    const r = await km1s(n(1), ['exec', 'web1', '--', '/app/node', '-e', js])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim(), `${n(2).address} ${n(3).address}`)
  })

  it('egress: a container reaches the LAN (another node) through the masquerade', async () => {
    // A server on n3's underlay address, outside any container; the client is a container on n1.
    const server = n(3).exec(
      [
        NODE_BIN,
        '-e',
        `require('http').createServer((q,s)=>{s.end(q.socket.remoteAddress);process.exit(0)}).listen(${PORT + 1})`,
      ],
      { timeoutMs: 15_000 },
    )
    let seen = ''
    await waitFor(
      'the container to reach n3 on the LAN',
      async () => {
        const r = await inContainer(n(1), 'web1', [
          NODE_BIN,
          '-e',
          FETCH,
          `http://${n(3).address}:${PORT + 1}/`,
        ])
        seen = r.stdout
        return r.code === 0
      },
      { timeoutMs: 10_000, intervalMs: 200 },
    )
    await server
    assert.equal(seen.replace(/^::ffff:/, ''), n(1).address, 'the LAN sees the node, not the container')
  })

  it('km1s status and km1s doctor show the overlay per peer: endpoint, handshake, bytes', async () => {
    const s = await status(n(1))
    const peer4 = s.network?.peers.find((p) => p.name === n(4).name)
    assert.ok(peer4, JSON.stringify(s.network))
    assert.equal(peer4.endpoint, `${n(4).address}:51820`)
    assert.ok(peer4.latestHandshake !== null && peer4.rxBytes > 0 && peer4.txBytes > 0, JSON.stringify(peer4))
    const text = await km1sOk(n(1), ['status'])
    assert.match(text, new RegExp(`Overlay:.*${s.network?.subnet.replace(/\./g, '\\.')}`))
    assert.match(
      text,
      new RegExp(`${n(4).name} .*${n(4).address.replace(/\./g, '\\.')}:51820 .*handshake .* ago`),
    )
    const doctor = await km1s(n(1), ['doctor', '--json'])
    const checks = JSON.parse(doctor.stdout).checks as Array<{ id: string; detail: string; level: string }>
    const overlay = checks.find((c) => c.id === `overlay-${n(4).name}`)
    assert.ok(overlay, doctor.stdout)
    assert.equal(overlay.level, 'ok')
    assert.match(overlay.detail, /handshake .* ago/)
  })

  it('a peer whose first handshake does not come is added again by one side, at most 4 times', async () => {
    // Of n2 and n3, only the node whose WireGuard key sorts first adds a stuck peer again (docs/network.md
    // "First contact"). Its WireGuard packets to the other are dropped (the mesh goes on, so the other stays
    // alive), and the other's peer is removed on it: its next apply adds the peer back, whose handshake
    // cannot come.
    const [s2, s3] = [(await status(n(2))).network, (await status(n(3))).network]
    assert.ok(s2 && s3)
    const [low, high, lowNet, highNet] =
      s2.publicKey < s3.publicKey ? [n(2), n(3), s2, s3] : [n(3), n(2), s3, s2]
    const endpoint = lowNet.peers.find((p) => p.publicKey === highNet.publicKey)?.endpoint ?? ''
    const [host, port] = [
      endpoint.slice(0, endpoint.lastIndexOf(':')),
      endpoint.slice(endpoint.lastIndexOf(':') + 1),
    ]
    assert.match(host, /^198\.1[89]\./, `the endpoint of ${high.name} on ${low.name}: ${endpoint}`)
    const again = (node: LabNode, key: string, from: number) =>
      node
        .log()
        .slice(from)
        .split('\n')
        .filter((l) => l.includes('adding it again') && l.includes(key)).length
    const [lowFrom, highFrom] = [low.log().length, high.log().length]
    const nft = (commands: string) => low.exec(['nft', commands])
    try {
      const drop = await nft(
        `add table inet km1stest; add chain inet km1stest out { type filter hook output priority 0; }; add rule inet km1stest out ip daddr ${host} udp dport ${port} drop`,
      )
      assert.equal(drop.code, 0, drop.stderr)
      const rm = await low.exec(['wg', 'set', lowNet.interface, 'peer', highNet.publicKey, 'remove'])
      assert.equal(rm.code, 0, rm.stderr)
      await waitFor(
        `${low.name} to add ${high.name} again 4 times`,
        async () => again(low, highNet.publicKey, lowFrom) >= 4,
        {
          timeoutMs: 30_000,
          intervalMs: 200,
        },
      )
      await new Promise((r) => setTimeout(r, 2_500))
      assert.equal(
        again(low, highNet.publicKey, lowFrom),
        4,
        "then it leaves the peer to WireGuard's own retries",
      )
      assert.equal(again(high, lowNet.publicKey, highFrom), 0, `${high.name} never adds ${low.name} again`)
    } finally {
      await nft('delete table inet km1stest')
    }
    await waitFor(
      `${low.name} to shake hands with ${high.name} again`,
      async () =>
        (await status(low)).network?.peers.find((p) => p.publicKey === highNet.publicKey)?.latestHandshake !=
        null,
      { timeoutMs: 30_000, intervalMs: 200 },
    )
    await reach(low, `web${low.index}`, await ipOf(high, `web${high.index}`), `web${high.index}`)
  })

  it('kill wireguard-go on a node: traffic flows again within seconds', async () => {
    const before = (await status(n(4))).network
    const pid = before?.pid as number
    assert.ok(pid > 0)
    // The process of that node: a child of its agent, serving its interface.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    assert.equal(ppid, n(4).pid(), 'wireguard-go is a child of the agent of n4')
    assert.match(
      readFileSync(`/proc/${pid}/cmdline`, 'utf8'),
      new RegExp(`wireguard-go\0${before?.interface}`),
    )
    process.kill(pid, 'SIGKILL')
    const t0 = Date.now()
    await reach(n(1), 'web1', await ipOf(n(4), 'web4'), 'web4', 20_000)
    const after = (await status(n(4))).network
    assert.notEqual(after?.pid, pid)
    assert.ok((after?.restarts ?? 0) >= 1)
    process.stdout.write(`# traffic back ${Date.now() - t0} ms after the kill\n`)
  })

  it('an agent restart keeps the subnet and the overlay', async () => {
    const before = (await status(n(4))).network
    await n(4).stop()
    await startAgent(n(4), { runtime: 'oci', extraArgs: agentArgs(n(4)) })
    const after = (await status(n(4))).network
    assert.equal(after?.subnet, before?.subnet)
    assert.equal(after?.publicKey, before?.publicKey)
    const ip4 = await ipOf(n(4), 'web4')
    await reach(n(1), 'web1', ip4, 'web4')
    await reach(n(4), 'web4', await ipOf(n(2), 'web2'), 'web2')
  })

  it('an agent killed with -9 takes its wireguard-go along, and comes back with the overlay', async () => {
    const before = (await status(n(3))).network
    const pid = before?.pid as number
    await n(3).kill('SIGKILL')
    await waitFor(
      'the wireguard-go of n3 to end',
      async () =>
        !existsSync(`/proc/${pid}/cmdline`) || readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '),
      {
        timeoutMs: 5_000,
        intervalMs: 50,
      },
    )
    await startAgent(n(3), { runtime: 'oci', extraArgs: agentArgs(n(3)) })
    assert.equal((await status(n(3))).network?.subnet, before?.subnet)
    await reach(n(1), 'web1', await ipOf(n(3), 'web3'), 'web3')
  })

  it('two nodes claiming one subnet: the later claim moves, and both work', async () => {
    const n2 = n(2)
    const n5 = n(5)
    const taken = (await status(n2)).network?.subnet as string
    await lab.partition([n5], nodes.slice(0, 4))
    // n5 starts alone once, to have an identity, then again with a claim of n2's subnet made now: as if two
    // nodes had picked the same one while apart.
    await startAgent(n5, { runtime: 'oci', extraArgs: agentArgs(n5) })
    started.push(n5)
    const id5 = (await status(n5)).id
    sockets.push(`/var/run/wireguard/${(await status(n5)).network?.interface}.sock`)
    await n5.stop()
    await writeFile(
      join(n5.dataDir, 'network', 'subnet.json'),
      JSON.stringify({ cidr: taken, peer: id5, claimedAt: Date.now() }),
    )
    // With a peer to dial: multicast discovery would find the others only at its next query after the heal.
    await startAgent(n5, { runtime: 'oci', extraArgs: [...agentArgs(n5), '--peer', listenAddr(n(1))] })
    assert.equal((await status(n5)).network?.subnet, taken, 'n5 holds the same subnet while partitioned')
    const before5 = await createServer(n5, 'web5')
    assert.ok(before5.startsWith(taken.split('.').slice(0, 3).join('.')), before5)

    await lab.heal()
    await waitForAlive(nodes, nodes, 30_000)
    await waitFor(
      'n5 to move off the subnet of n2',
      async () => {
        const s = (await status(n5)).network?.subnet
        return s !== undefined && s !== taken
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    )
    assert.equal((await status(n2)).network?.subnet, taken, 'n2 keeps its subnet (the earlier claim)')
    const moved = (await status(n5)).network?.subnet as string
    const subnets = await Promise.all(nodes.map(async (node) => (await status(node)).network?.subnet))
    assert.equal(new Set(subnets).size, 5, subnets.join(' '))
    const ip5 = await ipOf(n5, 'web5')
    assert.ok(ip5.startsWith(moved.split('.').slice(0, 3).join('.')), `${ip5} in ${moved}`)
    await reach(n(1), 'web1', ip5, 'web5')
    await reach(n(1), 'web1', await ipOf(n2, 'web2'), 'web2')
    await reach(n5, 'web5', await ipOf(n2, 'web2'), 'web2')
  })
})
