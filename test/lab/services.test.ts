// Services on 5 real nodes (oci runtime): a service name reaches its replicas from a container on every
// node through the kernel load balancer, more than one backend answers, every node's DNS gives the same
// answers (A and SRV), an unhealthy replica leaves the load balancer, the headless answers and
// `km1s services` within its health interval and is made again after its failures, and `km1s rm`
// removes the service with its workload.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { ReplicaView, ServiceView, StatusView } from '../../src/api/schemas.ts'
import type { ContainerStatus } from '../../src/runtime/types.ts'
import { type Cluster, km1s, km1sOk, startCluster, waitForAlive } from './cluster.ts'
import { type LabNode, waitFor } from './lab.ts'
import { isRoot } from './runtime-fixture.ts'

// A replica answers with its container name; GET /sick makes its /health answer 500 from then on.
const SERVER = `
import http.server, os
name = os.environ['KM1S_WORKLOAD'] + '-' + os.environ['KM1S_REPLICA']
sick = [False]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        if s.path == '/sick': sick[0] = True
        body = (name + '\\n').encode()
        s.send_response(500 if s.path == '/health' and sick[0] else 200)
        s.send_header('Content-Length', str(len(body)))
        s.end_headers()
        s.wfile.write(body)
    def log_message(s, *a): pass
http.server.ThreadingHTTPServer(('', int(os.environ['PORT'])), H).serve_forever()
`
const server = (port: number) => [
  '--port',
  String(port),
  '--env',
  `PORT=${port}`,
  '--memory',
  '48Mi',
  '--health-http',
  '/health',
  '--health-interval',
  '1s',
  '--health-restart-after',
  '4',
  '--',
  '/usr/bin/python3',
  '-c',
  SERVER,
]

describe('services on 5 nodes', { skip: isRoot ? false : 'needs root' }, () => {
  let c: Cluster
  let nodes: LabNode[]
  const client = (n: LabNode) => `client-${n.name}`

  const services = async (n: LabNode) => JSON.parse(await km1sOk(n, ['services', '--json'])) as ServiceView[]
  const ps = async (n: LabNode) => JSON.parse(await km1sOk(n, ['ps', '--json'])) as ReplicaView[]
  /**
   * `count` GETs through a new connection each, from the client container on `n`; the answering names.
   * Every request's curl exit code and times (name lookup, connect, total) go into `trace`, for the message
   * of a failed assertion.
   */
  async function getFrom(n: LabNode, url: string, count: number, trace: string[] = []): Promise<string[]> {
    const timing = ' %{exitcode} dns=%{time_namelookup} connect=%{time_connect} total=%{time_total}'
    const loop = `for i in $(seq ${count}); do echo "$(curl -s --max-time 2 -w '${timing}' ${url} | tr -d '\\n')"; done`
    const r = await km1s(n, ['exec', client(n), '--', '/bin/sh', '-c', loop])
    assert.equal(r.code, 0, r.stderr)
    const lines = r.stdout.split('\n').filter((l) => l !== '')
    trace.push(...lines.map((l) => `${n.name}: ${l}`))
    return lines.map((l) => l.split(' ')[0] as string).filter((name) => name !== '')
  }
  async function dig(n: LabNode, ...args: string[]): Promise<string> {
    const r = await n.exec(['dig', '@127.0.0.1', '+tries=1', '+time=2', '+short', ...args], {
      timeoutMs: 10_000,
    })
    assert.equal(r.code, 0, r.stderr)
    return r.stdout
  }
  const sorted = (s: string) => s.trim().split('\n').sort().join(' ')

  before(async () => {
    c = await startCluster(5, { name: 'svc', agent: { runtime: 'oci' } })
    nodes = c.nodes
    await waitForAlive(nodes, nodes)
    const first = nodes[0] as LabNode
    await km1sOk(first, ['run', 'web', '--replicas', '3', '--service', 'web', ...server(8080)])
    await km1sOk(first, ['run', 'api', '--replicas', '2', '--service', 'api', '--headless', ...server(8081)])
    await Promise.all(
      nodes.map(async (n) => {
        const file = join(c.lab.dir, `${client(n)}.json`)
        await writeFile(
          file,
          JSON.stringify({
            name: client(n),
            processes: [{ name: 'main', args: ['/bin/sleep', 'infinity'] }],
          }),
        )
        await km1sOk(n, ['containers', 'create', '-f', file])
      }),
    )
  })

  after(async () => {
    try {
      const first = nodes?.[0]
      if (first) for (const w of ['web', 'api']) await km1s(first, ['rm', w])
      for (const n of nodes ?? []) await km1s(n, ['containers', 'rm', client(n)])
      await Promise.all(
        (nodes ?? []).map((n) =>
          waitFor(
            `${n.name} to have no containers`,
            async () => JSON.parse(await km1sOk(n, ['containers', '--json'])).length === 0,
            {
              timeoutMs: 30_000,
              intervalMs: 200,
            },
          ).catch((err) => console.error(String(err))),
        ),
      )
    } finally {
      await c?.lab.down()
    }
  })

  it('km1s services shows each service with its virtual IP, ports and healthy/total replicas on every node', async () => {
    for (const n of nodes) {
      await waitFor(
        `${n.name} to see web 3/3 and api 2/2`,
        async () => {
          const list = await services(n)
          const web = list.find((s) => s.name === 'web')
          const api = list.find((s) => s.name === 'api')
          return web?.healthy === 3 && web.total === 3 && api?.healthy === 2 && api.total === 2
            ? list
            : undefined
        },
        { timeoutMs: 60_000, intervalMs: 250 },
      )
    }
    const [web] = (await services(nodes[2] as LabNode)).filter((s) => s.name === 'web')
    assert.match(web?.ip ?? '', /^10\.43\.\d+\.\d+$/)
    assert.deepEqual(web?.ports, [8080])
    const table = await km1sOk(nodes[3] as LabNode, ['services'])
    assert.match(table, /NAME\s+IP\s+PORTS\s+WORKLOAD\s+HEALTHY/)
    assert.match(table, new RegExp(`web\\s+${web?.ip?.replaceAll('.', '\\.')}\\s+8080\\s+web\\s+3/3`))
    assert.match(table, /api\s+headless\s+8081\s+api\s+2\/2/)
  })

  it('from a container on every node, web.km1s.internal:8080 reaches the replicas, and more than one answers', async () => {
    // Right after start, two nodes' first WireGuard handshake can be a second or two late (crossed
    // initiations, added again after a second: docs/network.md "First contact"; before that they waited
    // 5 s, and ~6 % of runs lost a request here). This test is about the load balancer and names, not that
    // window: it starts once every pair has shaken hands.
    await Promise.all(
      nodes.map((n) =>
        waitFor(
          `${n.name} to have a WireGuard handshake with every other node`,
          async () => {
            const peers =
              (JSON.parse(await km1sOk(n, ['status', '--json'])) as StatusView).network?.peers ?? []
            return peers.length === nodes.length - 1 && peers.every((p) => p.latestHandshake !== null)
          },
          { timeoutMs: 30_000, intervalMs: 200 },
        ),
      ),
    )
    await Promise.all(
      nodes.map(async (n) => {
        const trace: string[] = []
        const names = await getFrom(n, 'http://web.km1s.internal:8080/', 6, trace)
        assert.equal(names.length, 6, trace.join('\n'))
        for (const name of names) assert.match(name, /^web-[0-2]$/)
        assert.ok(new Set(names).size > 1, `${n.name}: only ${names[0]} answered`)
      }),
    )
    // The node itself reaches the service IP too (the route for 10.43.0.0/16 and the output hook).
    const ip = (await services(nodes[0] as LabNode)).find((s) => s.name === 'web')?.ip as string
    const r = await (nodes[4] as LabNode).exec(['curl', '-s', '--max-time', '3', `http://${ip}:8080/`])
    assert.match(r.stdout, /^web-[0-2]$/m)
  })

  it('dig gives identical A and SRV answers on every node', async () => {
    const ip = (await services(nodes[0] as LabNode)).find((s) => s.name === 'web')?.ip as string
    const answers = await Promise.all(
      nodes.map(async (n) => [
        await dig(n, 'web.km1s.internal'),
        await dig(n, 'SRV', '_8080._tcp.web.km1s.internal'),
        sorted(await dig(n, 'api.km1s.internal')),
        sorted(await dig(n, 'SRV', '_8081._tcp.api.km1s.internal')),
      ]),
    )
    for (const a of answers) assert.deepEqual(a, answers[0])
    assert.equal(answers[0]?.[0]?.trim(), ip)
    assert.match(answers[0]?.[1] ?? '', /^\d+ \d+ 8080 web\.km1s\.internal\.$/m)
    assert.equal(answers[0]?.[2]?.split(' ').length, 2)
    assert.match(answers[0]?.[3] ?? '', /8081 api-\d\.ctr\.km1s\.internal\./)
  })

  it('an unhealthy replica leaves the load balancer and the answers, and is made again after 4 failures', async () => {
    const rows = await ps(nodes[0] as LabNode)
    const web0 = rows.find((r) => r.name === 'web-0') as ReplicaView
    const api0 = rows.find((r) => r.name === 'api-0') as ReplicaView
    const owner = (r: ReplicaView) => nodes.find((n) => n.name === r.node) as LabNode
    for (const r of [web0, api0]) {
      const port = r.workload === 'web' ? 8080 : 8081
      const res = await owner(r).exec(['curl', '-s', '--max-time', '3', `http://${r.ip}:${port}/sick`])
      assert.equal(res.code, 0, res.stderr)
    }
    // Within the interval (1 s) plus replication: out of the answers and the table on every node. Each
    // drop is noted when seen: the replica is made again ~3 s later, and a loaded node's CLI is slow.
    await Promise.all(
      nodes.map((n) => {
        const seen = { web: false, api: false }
        return waitFor(
          `${n.name} to drop web-0 and api-0`,
          async () => {
            const list = await services(n)
            if (list.find((s) => s.name === 'web')?.healthy === 2) seen.web = true
            if (!seen.api && list.find((s) => s.name === 'api')?.healthy === 1) {
              seen.api = !(await dig(n, 'api.km1s.internal')).includes(api0.ip as string)
            }
            return seen.web && seen.api
          },
          { timeoutMs: 15_000, intervalMs: 50 },
        )
      }),
    )
    const client1 = nodes[1] as LabNode
    const names = await getFrom(client1, 'http://web.km1s.internal:8080/', 8)
    if (names.includes('web-0')) {
      // Only a replica made again (a fresh web-0 that passed its check) may answer by now.
      const again = (await ps(client1)).find((r) => r.name === 'web-0')
      assert.notEqual(again?.uptime, web0.uptime)
    }
    // After 4 failed checks it is made again, healthy: 3/3 and 2/2 once more, with a restart behind it.
    for (const n of nodes) {
      await waitFor(
        `${n.name} to see web 3/3 and api 2/2 again`,
        async () => {
          const list = await services(n)
          return (
            list.find((s) => s.name === 'web')?.healthy === 3 &&
            list.find((s) => s.name === 'api')?.healthy === 2
          )
        },
        { timeoutMs: 30_000, intervalMs: 250 },
      )
    }
  })

  it('a killed replica leaves the service and its load balancer on every node', async () => {
    const first = nodes[0] as LabNode
    // restart never: the killed replica stays down, so what is measured is leaving, not coming back.
    const args = ['run', 'kweb', '--replicas', '2', '--service', 'kweb', '--restart', 'never']
    await km1sOk(first, [...args, ...server(8082)])
    const healthy = async (n: LabNode) => (await services(n)).find((s) => s.name === 'kweb')?.healthy
    for (const n of nodes) await waitFor(`${n.name} to see kweb 2/2`, async () => (await healthy(n)) === 2)
    const victim = (await ps(first)).find((r) => r.name === 'kweb-0') as ReplicaView
    const owner = nodes.find((n) => n.name === victim.node) as LabNode
    const ctr = (JSON.parse(await km1sOk(owner, ['containers', '--json'])) as ContainerStatus[]).find(
      (x) => x.name === 'kweb-0',
    )
    const pid = ctr?.processes[0]?.pid
    assert.ok(pid, 'kweb-0 has a process')
    const killed = await owner.exec(['kill', '-KILL', String(pid)])
    assert.equal(killed.code, 0, killed.stderr)
    await Promise.all(
      nodes.map((n) =>
        waitFor(
          `${n.name} to drop kweb-0 from the answers and the table`,
          async () =>
            (await healthy(n)) === 1 && !(await dig(n, 'kweb.km1s.internal')).includes(victim.ip as string),
          { timeoutMs: 10_000, intervalMs: 100 },
        ),
      ),
    )
    // Through the virtual IP (nftables), from a client on every node: only the survivor answers.
    for (const n of nodes) {
      const names = await getFrom(n, 'http://kweb.km1s.internal:8082/', 4)
      assert.deepEqual([...new Set(names)], ['kweb-1'], `from ${n.name}`)
    }
    await km1sOk(first, ['rm', 'kweb'])
  })

  it('a rolling update replaces one replica at a time, each after the new one passed its check', async () => {
    const first = nodes[0] as LabNode
    const observer = nodes[1] as LabNode
    // Two passed checks (about 1.2 s) before a new replica counts: time enough to see a turn taken early.
    const update = ['--env', 'V=2', '--health-healthy-after', '2']
    const before = new Set((await ps(observer)).filter((r) => r.workload === 'web').map((r) => r.spec))
    await km1sOk(first, ['run', 'web', '--replicas', '3', '--service', 'web', ...update, ...server(8080)])
    const lows: number[] = []
    const trace: string[] = []
    await waitFor(
      'the update to finish with 3 healthy replicas of the new version',
      async () => {
        const [list, rows] = await Promise.all([services(observer), ps(observer)])
        const healthy = list.find((s) => s.name === 'web')?.healthy ?? 0
        lows.push(healthy)
        const web = rows.filter((r) => r.workload === 'web')
        trace.push(
          `${healthy}[${web.map((r) => `${r.name}@${r.node}:${r.state}${before.has(r.spec) ? '' : '*'}`).join(',')}]`,
        )
        const done = web.every((r) => !before.has(r.spec) && r.current && r.state === 'running')
        return web.length === 3 && done && healthy === 3
      },
      { timeoutMs: 60_000, intervalMs: 100 },
    )
    // Never two replicas out at once (a single sample may lag behind gossip; two in a row may not).
    const twice = lows.some((n, i) => n < 2 && (lows[i + 1] ?? 3) < 2)
    assert.ok(!twice, `healthy replicas seen during the update: ${trace.join(' ')}`)
    assert.ok(
      lows.some((n) => n === 2),
      `the update replaced something: ${lows.join(' ')}`,
    )
  })

  it('km1s rm removes the workload and its service, on every node', async () => {
    await km1sOk(nodes[2] as LabNode, ['rm', 'api'])
    for (const n of nodes)
      await waitFor(
        `${n.name} to forget api`,
        async () => !(await services(n)).some((s) => s.name === 'api'),
        {
          timeoutMs: 10_000,
        },
      )
    const r = await (nodes[0] as LabNode).exec([
      'dig',
      '@127.0.0.1',
      '+tries=1',
      '+time=2',
      'api.km1s.internal',
    ])
    assert.match(r.stdout, /status: NXDOMAIN/)
  })
})
