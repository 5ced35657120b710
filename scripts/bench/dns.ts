// DNS benchmark: queries per second and latency (p50/p99) with dnsperf against a km1s agent's DNS server and
// against dnsmasq serving the same names from a hosts file, in the same lab node, in the same run (a ratio).
// The query mix: every node name of a 3-node cluster (A) and an unknown cluster name (NXDOMAIN).
// Needs root; installs dnsperf and dnsmasq-base on demand. Usage: scripts/bench/dns [--quick]
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { client, startCluster, waitForAlive } from '../../test/lab/cluster.ts'
import type { LabNode } from '../../test/lab/lab.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const SECONDS = quick ? 4 : 10
const RUNS = quick ? 1 : 5
const log = (line: string) => process.stdout.write(`${line}\n`)

if (process.getuid?.() !== 0) {
  process.stderr.write('The DNS benchmark needs root (network namespaces).\n')
  process.exit(1)
}

function ensureTools(): void {
  const missing = ['dnsperf', 'dnsmasq'].filter(
    (t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0,
  )
  if (missing.length === 0) return
  log('installing dnsperf and dnsmasq-base (--no-install-recommends)')
  const r = spawnSync(
    'apt-get',
    ['install', '-y', '-qq', '--no-install-recommends', 'dnsperf', 'dnsmasq-base'],
    {
      stdio: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    },
  )
  if (r.status !== 0) throw new Error('could not install dnsperf and dnsmasq-base')
}

interface PerfResult {
  qps: number
  p50: number
  p99: number
  lost: number
}

/** One dnsperf run in the node's namespace; per-query latencies from its verbose lines. */
async function dnsperf(node: LabNode, port: number, queries: string): Promise<PerfResult> {
  const r = await node.exec(
    [
      'dnsperf',
      '-s',
      '127.0.0.1',
      '-p',
      String(port),
      '-d',
      queries,
      '-l',
      String(SECONDS),
      '-c',
      '4',
      '-q',
      '32',
      '-v',
    ],
    { timeoutMs: (SECONDS + 20) * 1000 },
  )
  if (r.code !== 0) throw new Error(`dnsperf failed: ${r.stderr || r.stdout.slice(-500)}`)
  const latencies: number[] = []
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('> ')) latencies.push(Number(line.slice(line.lastIndexOf(' ') + 1)) * 1000)
  }
  const qps = Number(/Queries per second:\s+([0-9.]+)/.exec(r.stdout)?.[1])
  const lost = Number(/Queries lost:\s+(\d+)/.exec(r.stdout)?.[1])
  return { qps, p50: percentile(latencies, 50), p99: percentile(latencies, 99), lost }
}

function median(xs: number[]): number {
  return percentile(xs, 50)
}

async function main(): Promise<void> {
  ensureTools()
  const c = await startCluster(3, { name: 'bdns' })
  const n1 = c.nodes[0] as LabNode
  let dnsmasqPid: number | undefined
  try {
    await waitForAlive(c.nodes, c.nodes)
    const dir = join(c.lab.dir, 'dnsbench')
    await n1.exec(['mkdir', '-p', dir])
    const names = c.nodes.map((n) => `${n.name}.node.km1s.internal`)
    writeFileSync(join(dir, 'hosts'), c.nodes.map((n, i) => `${n.address} ${names[i]}\n`).join(''))
    const lines: string[] = []
    for (let i = 0; i < 1000; i++)
      lines.push(i % 4 === 3 ? 'nobody.node.km1s.internal A' : `${names[i % 3]} A`)
    writeFileSync(join(dir, 'queries'), `${lines.join('\n')}\n`)
    // dnsmasq in the same namespace, authoritative for km1s.internal from the same names, nothing upstream.
    const pidFile = join(dir, 'dnsmasq.pid')
    const started = await n1.exec([
      'dnsmasq',
      '--port=5300',
      '--listen-address=127.0.0.1',
      '--bind-interfaces',
      '--no-resolv',
      '--no-hosts',
      `--addn-hosts=${join(dir, 'hosts')}`,
      '--local=/km1s.internal/',
      '--cache-size=1000',
      `--pid-file=${pidFile}`,
      '--user=root',
    ])
    if (started.code !== 0) throw new Error(`dnsmasq failed: ${started.stderr}`)
    dnsmasqPid = Number(readFileSync(pidFile, 'utf8').trim())
    // Warm both (ARP, caches, JIT).
    await dnsperf(n1, 53, join(dir, 'queries'))
    await dnsperf(n1, 5300, join(dir, 'queries'))
    const km: PerfResult[] = []
    const dm: PerfResult[] = []
    for (let i = 0; i < RUNS; i++) {
      km.push(await dnsperf(n1, 53, join(dir, 'queries')))
      dm.push(await dnsperf(n1, 5300, join(dir, 'queries')))
      log(`run ${i + 1}: km1s ${km.at(-1)?.qps.toFixed(0)} q/s, dnsmasq ${dm.at(-1)?.qps.toFixed(0)} q/s`)
    }
    const status = await client(n1).status()
    const rows: Row[] = [
      {
        metric: `queries/s (median of ${RUNS} × ${SECONDS} s, dnsperf -c 4 -q 32)`,
        value: median(km.map((r) => r.qps)),
        unit: 'q/s',
        baseline: median(dm.map((r) => r.qps)),
        target: '≥ 0.8× dnsmasq',
      },
      {
        metric: 'latency p50 under that load',
        value: median(km.map((r) => r.p50)),
        unit: 'ms',
        baseline: median(dm.map((r) => r.p50)),
      },
      {
        metric: 'latency p99 under that load',
        value: median(km.map((r) => r.p99)),
        unit: 'ms',
        baseline: median(dm.map((r) => r.p99)),
        target: '≤ 2 ms',
      },
      {
        // Each pair ran back to back: the median of their ratios is steadier than the ratio of medians on
        // a shared machine whose load drifts between runs.
        metric: 'queries/s ratio of paired runs, median',
        value: median(km.map((r, i) => r.qps / (dm[i]?.qps ?? Number.NaN))),
        unit: '×',
        target: '≥ 0.8',
      },
      {
        metric: 'queries lost',
        value: km.reduce((s, r) => s + r.lost, 0),
        unit: '',
        baseline: dm.reduce((s, r) => s + r.lost, 0),
      },
      { metric: 'agent RSS after the load', value: status.memory.rss / 1024 / 1024, unit: 'MiB' },
    ]
    printRows('DNS: km1s agent vs dnsmasq (baseline), same names, same namespace', rows)
    log(`\nJSON: ${writeJson('dns', { rows, km1s: km, dnsmasq: dm, dnsStats: status.dns })}`)
  } finally {
    if (dnsmasqPid) {
      try {
        process.kill(dnsmasqPid, 'SIGTERM')
      } catch {}
    }
    await c.lab.down()
  }
}

await main()
