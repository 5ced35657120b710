// Network benchmark: container → container across two lab nodes through the WireGuard overlay (TCP
// throughput with iperf3, ICMP round trip with ping), beside the raw underlay between the same two nodes
// in the same run (ratios); wireguard-go's RSS idle and under load. Needs root, iperf3 and ping.
// Usage: scripts/bench/network [--quick]
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { StatusView } from '../../src/api/index.ts'
import { instanceId } from '../../src/runtime/names.ts'
import { agentArgs, km1s, km1sOk, setupCluster, startAgent, waitForAlive } from '../../test/lab/cluster.ts'
import { createLab, type LabNode } from '../../test/lab/lab.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const SECONDS = quick ? 3 : 8
const PINGS = quick ? 50 : 200
const IPERF_PORT = 5201
const log = (line: string) => process.stdout.write(`${line}\n`)
const MiB = 1024 * 1024

if (process.getuid?.() !== 0) {
  process.stderr.write('The network benchmark needs root (namespaces, WireGuard, nftables).\n')
  process.exit(1)
}
for (const tool of ['iperf3', 'ping']) {
  try {
    execFileSync(tool, ['-V'], { stdio: 'ignore' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      process.stderr.write(
        `The network benchmark needs ${tool}: apt-get install -y --no-install-recommends ${tool === 'ping' ? 'iputils-ping' : tool}\n`,
      )
      process.exit(1)
    }
  }
}

async function status(node: LabNode): Promise<StatusView> {
  return JSON.parse(await km1sOk(node, ['status', '--json'])) as StatusView
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) * 1024 : 0
}

/** iperf3 client for SECONDS: received bits per second. `prefix` runs it in a container's namespace. */
async function iperf(node: LabNode, prefix: string[], server: string): Promise<number> {
  const r = await node.exec(
    [...prefix, 'iperf3', '-c', server, '-p', String(IPERF_PORT), '-t', String(SECONDS), '-J'],
    {
      timeoutMs: (SECONDS + 20) * 1000,
    },
  )
  if (r.code !== 0) throw new Error(`iperf3 to ${server}: ${r.stdout.slice(-500)} ${r.stderr}`)
  return JSON.parse(r.stdout).end.sum_received.bits_per_second as number
}

/** Round trips in ms, one per ping. */
async function pings(node: LabNode, prefix: string[], target: string): Promise<number[]> {
  const r = await node.exec([...prefix, 'ping', '-c', String(PINGS), '-i', '0.01', '-W', '2', target], {
    timeoutMs: 60_000,
  })
  const times = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]))
  if (times.length < PINGS * 0.9) throw new Error(`ping ${target}: ${r.stdout.slice(-300)}`)
  return times
}

const lab = await createLab({ nodes: 2, name: 'benchnet' })
try {
  const [n1, n2] = lab.nodes as [LabNode, LabNode]
  await setupCluster(lab.nodes)
  await Promise.all(lab.nodes.map((n) => startAgent(n, { runtime: 'oci', extraArgs: agentArgs(n) })))
  await waitForAlive(lab.nodes, lab.nodes)
  const s1 = await status(n1)
  const s2 = await status(n2)
  const inst1 = instanceId(s1.id)

  // The iperf3 server of the overlay run is a container process on n2; the client runs in the network
  // namespace of a container on n1 (the same path its processes take).
  const spec = (name: string, args: string[]) => ({
    name,
    processes: [{ name: 'main', args, limits: { memoryBytes: 64 * MiB, pids: 16 } }],
  })
  await writeFile(
    join(lab.dir, 'srv.json'),
    JSON.stringify(spec('srv', ['/usr/bin/iperf3', '-s', '-p', String(IPERF_PORT)])),
  )
  await writeFile(join(lab.dir, 'cli.json'), JSON.stringify(spec('cli', ['/bin/sleep', '3600'])))
  await km1sOk(n2, ['containers', 'create', '-f', join(lab.dir, 'srv.json')])
  await km1sOk(n1, ['containers', 'create', '-f', join(lab.dir, 'cli.json')])
  const srvIp = (
    JSON.parse(await km1sOk(n2, ['containers', '--json'])) as Array<{ name: string; ip: string }>
  ).find((c) => c.name === 'srv')?.ip as string
  const inCli = ['nsenter', `--net=/run/netns/km1s-${inst1}-cli`]
  // How long after the cluster is up and both containers exist the first packet crosses.
  const t0 = performance.now()
  let firstPacketMs = Number.NaN
  while (performance.now() - t0 < 30_000) {
    const r = await n1.exec([...inCli, 'ping', '-c', '1', '-W', '1', srvIp], { timeoutMs: 5_000 })
    if (r.code === 0) {
      firstPacketMs = performance.now() - t0
      break
    }
  }

  const wgPids = [s1.network?.pid, s2.network?.pid].filter((p): p is number => typeof p === 'number')
  const idleRss = Math.max(...wgPids.map(rssOf))

  // Raw underlay: an iperf3 server in n2's node namespace, the client in n1's.
  log(`underlay: iperf3 ${SECONDS} s, ${PINGS} pings`)
  const rawServer = n2.exec(['iperf3', '-s', '-1', '-p', String(IPERF_PORT)], {
    timeoutMs: (SECONDS + 30) * 1000,
  })
  await new Promise((r) => setTimeout(r, 300))
  const rawBps = await iperf(n1, [], n2.address)
  await rawServer
  const rawRtt = await pings(n1, [], n2.address)

  log(`overlay: container on ${n1.name} → container on ${n2.name} (${srvIp}) through ${s1.network?.kind}`)
  let peakRss = 0
  const sampler = setInterval(() => {
    for (const pid of wgPids) peakRss = Math.max(peakRss, rssOf(pid))
  }, 100)
  const ovlBps = await iperf(n1, inCli, srvIp)
  clearInterval(sampler)
  const ovlRtt = await pings(n1, inCli, srvIp)

  const rows: Row[] = [
    {
      metric: 'throughput container→container (overlay)',
      value: ovlBps / 1e6,
      unit: 'Mbit/s',
      baseline: rawBps / 1e6,
    },
    { metric: 'throughput raw underlay', value: rawBps / 1e6, unit: 'Mbit/s' },
    {
      metric: 'rtt p50 container→container',
      value: percentile(ovlRtt, 50),
      unit: 'ms',
      baseline: percentile(rawRtt, 50),
    },
    {
      metric: 'rtt p99 container→container',
      value: percentile(ovlRtt, 99),
      unit: 'ms',
      baseline: percentile(rawRtt, 99),
    },
    { metric: 'rtt p50 raw underlay', value: percentile(rawRtt, 50), unit: 'ms' },
    { metric: 'first packet after cluster start', value: firstPacketMs, unit: 'ms' },
    { metric: 'wireguard-go RSS idle (max of 2)', value: idleRss / MiB, unit: 'MiB' },
    {
      metric: 'wireguard-go RSS peak under load',
      value: peakRss / MiB,
      unit: 'MiB',
      target: '≤ 32 MiB (GOMEMLIMIT)',
    },
  ]
  printRows(
    `Network benchmark (${s1.network?.kind}, MTU ${s1.network?.mtu}, ${SECONDS} s iperf3, ${PINGS} pings)`,
    rows,
  )
  log(`\n${writeJson('network', { date: new Date().toISOString(), quick, rows })}`)
  for (const [node, name] of [
    [n1, 'cli'],
    [n2, 'srv'],
  ] as const)
    await km1s(node, ['containers', 'rm', name])
  for (const n of lab.nodes) await n.stop()
} finally {
  await lab.down()
}
