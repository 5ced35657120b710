// Services benchmark: HTTP through a service's virtual IP (nftables DNAT) beside the same replica's own IP
// in the same run (ratios): a bulk download and many small GETs, each on a new connection, from a container
// on n1 to the one replica on n2 (across WireGuard). Then DNS follow latency: a service record written on
// n1 (a workload with --service and no replicas) → the first answer from `dig` on every node, and its
// removal → NXDOMAIN everywhere; p50/p99 over all nodes and rounds. Needs root, curl, dig.
// Usage: scripts/bench/services [--quick]
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { ServiceView, StatusView } from '../../src/api/index.ts'
import { instanceId } from '../../src/runtime/names.ts'
import { normalizeWorkload } from '../../src/scheduler/workload.ts'
import { client, km1s, km1sOk, startCluster, waitForAlive } from '../../test/lab/cluster.ts'
import { type LabNode, waitFor } from '../../test/lab/lab.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const NODES = 3
const BULK_MB = quick ? 64 : 256
const BULK_RUNS = quick ? 2 : 5
const SMALL_GETS = quick ? 200 : 500
const ROUNDS = quick ? 10 : 30
const log = (line: string) => process.stdout.write(`${line}\n`)

if (process.getuid?.() !== 0) {
  process.stderr.write('The services benchmark needs root (namespaces, nftables).\n')
  process.exit(1)
}

// /bulk?N streams N bytes of zeros; anything else answers the replica's name (HTTP/1.0: one connection each).
const SERVER = `
import http.server, os
name = os.environ['KM1S_WORKLOAD'] + '-' + os.environ['KM1S_REPLICA']
chunk = bytes(1 << 16)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        if s.path.startswith('/bulk?'):
            n = int(s.path[6:])
            s.send_response(200)
            s.send_header('Content-Length', str(n))
            s.end_headers()
            while n > 0:
                s.wfile.write(chunk[:min(n, len(chunk))])
                n -= len(chunk)
            return
        body = (name + '\\n').encode()
        s.send_response(200)
        s.send_header('Content-Length', str(len(body)))
        s.end_headers()
        s.wfile.write(body)
    def log_message(s, *a): pass
http.server.ThreadingHTTPServer(('', 8080), H).serve_forever()
`

async function main(): Promise<void> {
  const c = await startCluster(NODES, { name: 'svcbench', agent: { runtime: 'oci' } })
  const nodes = c.nodes
  const [n1, n2] = nodes as [LabNode, LabNode]
  try {
    await waitForAlive(nodes, nodes)
    await km1sOk(n2, ['label', 'n2', 'bench=web'])
    await km1sOk(n1, [
      'run',
      'web',
      '--service',
      'web',
      '--port',
      '8080',
      '--label',
      'bench=web',
      '--memory',
      '96Mi',
      '--health-tcp',
      '--wait',
      '--',
      '/usr/bin/python3',
      '-c',
      SERVER,
    ])
    const file = join(c.lab.dir, 'client.json')
    await writeFile(
      file,
      JSON.stringify({ name: 'client', processes: [{ name: 'main', args: ['/bin/sleep', 'infinity'] }] }),
    )
    await km1sOk(n1, ['containers', 'create', '-f', file])
    const svc = await waitFor(
      'web to be healthy on n1',
      async () => (await client(n1).services()).find((s: ServiceView) => s.name === 'web' && s.healthy === 1),
      { timeoutMs: 30_000 },
    )
    const vip = svc.ip as string
    const direct = svc.endpoints[0] as string
    const inst = instanceId((JSON.parse(await km1sOk(n1, ['status', '--json'])) as StatusView).id)
    const inClient = ['nsenter', `--net=/run/netns/km1s-${inst}-client`]
    log(`web: service ${vip}, replica ${direct} on n2; client on n1`)

    /** Seconds a curl command took (its own time_total sum), or throws. */
    const curl = async (args: string[], timeoutMs = 120_000): Promise<string> => {
      const r = await n1.exec([...inClient, 'curl', '-sS', ...args], { timeoutMs })
      if (r.code !== 0) throw new Error(`curl ${args.join(' ')}: ${r.stderr}`)
      return r.stdout
    }
    const bulk = async (ip: string) => {
      const out = await curl([
        '-o',
        '/dev/null',
        '-w',
        '%{speed_download}',
        `http://${ip}:8080/bulk?${BULK_MB * 1024 * 1024}`,
      ])
      return (Number(out) * 8) / 1e6
    }
    const small = async (ip: string) => {
      const urls = Array.from({ length: SMALL_GETS }, () => `http://${ip}:8080/`)
      const t0 = performance.now()
      const out = await curl(['-s', ...urls])
      const s = (performance.now() - t0) / 1000
      const answers = out.split('\n').filter((l) => l === 'web-0').length
      if (answers !== SMALL_GETS) throw new Error(`${answers} of ${SMALL_GETS} GETs answered through ${ip}`)
      return SMALL_GETS / s
    }
    await bulk(direct)
    await bulk(vip) // warm both paths
    const bulkVip: number[] = []
    const bulkDirect: number[] = []
    const smallVip: number[] = []
    const smallDirect: number[] = []
    for (let i = 0; i < BULK_RUNS; i++) {
      // Alternating, so a drift of the shared machine hits both sides alike.
      bulkDirect.push(await bulk(direct))
      bulkVip.push(await bulk(vip))
      smallDirect.push(await small(direct))
      smallVip.push(await small(vip))
    }
    const med = (v: number[]) => percentile(v, 50)
    log(
      `bulk Mbit/s direct ${bulkDirect.map((x) => x.toFixed(0))} service ${bulkVip.map((x) => x.toFixed(0))}`,
    )
    log(`GET/s direct ${smallDirect.map((x) => x.toFixed(0))} service ${smallVip.map((x) => x.toFixed(0))}`)

    // DNS follow: write a service on n1 through its API, then every node's dig loop reports when it sees it.
    const appear: number[] = []
    const vanish: number[] = []
    const api = client(n1)
    const watch = (n: LabNode, name: string, until: 'answer' | 'gone') => {
      const test = until === 'answer' ? '-z' : '-n'
      const script = `while [ ${test} "$(dig @127.0.0.1 +short +tries=1 +time=1 ${name})" ]; do :; done; date +%s%N`
      return n.exec(['sh', '-c', script], { timeoutMs: 30_000 }).then((r) => Number(r.stdout.trim()) / 1e6)
    }
    for (let i = 0; i < ROUNDS; i++) {
      const name = `follow-${i}`
      const w = normalizeWorkload({ name, command: ['/bin/true'], replicas: 0, ports: [80], service: name })
      let watchers = nodes.map((n) => watch(n, `${name}.km1s.internal`, 'answer'))
      await new Promise((r) => setTimeout(r, 150)) // the loops are running
      let t0 = Date.now()
      await api.putWorkload(w)
      for (const t of await Promise.all(watchers)) appear.push(Math.max(0, t - t0))
      watchers = nodes.map((n) => watch(n, `${name}.km1s.internal`, 'gone'))
      await new Promise((r) => setTimeout(r, 150))
      t0 = Date.now()
      await api.removeWorkload(name)
      for (const t of await Promise.all(watchers)) vanish.push(Math.max(0, t - t0))
    }
    const both = [...appear, ...vanish]
    const rows: Row[] = [
      {
        metric: 'bulk download via service IP',
        value: med(bulkVip),
        unit: 'Mbit/s',
        baseline: med(bulkDirect),
        target: '≥ 0.9×',
      },
      {
        metric: 'small GETs via service IP (new conn each)',
        value: med(smallVip),
        unit: 'req/s',
        baseline: med(smallDirect),
        target: '≥ 0.9×',
      },
      { metric: 'DNS follow: service added, p50', value: percentile(appear, 50), unit: 'ms' },
      {
        metric: 'DNS follow: service added, p99',
        value: percentile(appear, 99),
        unit: 'ms',
        target: '≤ 1000',
      },
      { metric: 'DNS follow: service removed, p50', value: percentile(vanish, 50), unit: 'ms' },
      {
        metric: 'DNS follow: service removed, p99',
        value: percentile(vanish, 99),
        unit: 'ms',
        target: '≤ 1000',
      },
      { metric: 'DNS follow: all, p99', value: percentile(both, 99), unit: 'ms', target: '≤ 1000' },
    ]
    printRows(
      `Services (${NODES} nodes, ${quick ? 'quick' : 'full'}; direct = the replica's own IP, same run)`,
      rows,
    )
    log(
      `\n${writeJson('services', { date: new Date().toISOString(), quick, vip, direct, bulkVip, bulkDirect, smallVip, smallDirect, appear, vanish, rows })}`,
    )
  } finally {
    await km1s(n1, ['rm', 'web']).catch(() => {})
    await km1s(n1, ['containers', 'rm', 'client']).catch(() => {})
    await Promise.all(
      nodes.map((n) =>
        waitFor(
          `${n.name} to have no containers`,
          async () => JSON.parse(await km1sOk(n, ['containers', '--json'])).length === 0,
          {
            timeoutMs: 30_000,
          },
        ).catch(() => {}),
      ),
    )
    await c.lab.down()
  }
}

await main()
