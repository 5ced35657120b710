// Remote exec and logs benchmark (docs/benchmarks.md): the latency a container on another node adds to
// `exec -- true` and to `logs --tail 1` (proxied over /km1s/remote/1.0.0), against the same requests to
// the node that runs it, measured in the same run. Two lab nodes, oci runtime; needs root.
// Usage: scripts/bench/remote [--runs N]
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { ApiClient } from '../../src/api/index.ts'
import { client, km1s, km1sOk, startCluster, waitForAlive } from '../../test/lab/cluster.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const runsArg = process.argv.indexOf('--runs')
const RUNS = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 20
const log = (line: string) => process.stdout.write(`${line}\n`)

if (process.getuid?.() !== 0) {
  process.stderr.write('The remote benchmark needs root (lab namespaces, crun).\n')
  process.exit(1)
}

/** Milliseconds of one `exec -- true` through `api`, from the request to the exit status. */
async function execTrue(api: ApiClient): Promise<number> {
  const t0 = performance.now()
  const ch = await api.exec({ container: 'c', args: ['/bin/true'], tty: false })
  ch.stdin.end()
  const exit = await ch.exited
  if (exit.code !== 0) throw new Error(`exec true exited ${exit.code}`)
  return performance.now() - t0
}

/** Milliseconds of one `logs --tail 1` (not following) through `api`. */
async function logsTail(api: ApiClient): Promise<number> {
  const t0 = performance.now()
  let n = 0
  for await (const _ of api.logs({ container: 'c', tail: 1 }, new AbortController().signal)) n++
  if (n !== 1) throw new Error(`logs --tail 1 gave ${n} lines`)
  return performance.now() - t0
}

/** Alternating local and remote samples, so drift affects both alike; the first two of each are warm-up. */
async function sample(local: () => Promise<number>, remote: () => Promise<number>) {
  const out = { local: [] as number[], remote: [] as number[] }
  for (let i = 0; i < RUNS + 2; i++) {
    const l = await local()
    const r = await remote()
    if (i >= 2) {
      out.local.push(l)
      out.remote.push(r)
    }
  }
  return out
}

async function main(): Promise<void> {
  const started = new Date().toISOString()
  log(`remote benchmark: ${RUNS} runs each, 2 nodes, oci runtime`)
  const cluster = await startCluster(2, { name: 'rbench', agent: { runtime: 'oci' } })
  const [n1, n2] = cluster.nodes
  if (!n1 || !n2) throw new Error('no nodes')
  try {
    await waitForAlive(cluster.nodes, cluster.nodes)
    const spec = join(cluster.lab.dir, 'c.json')
    const counter = 'i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done'
    await writeFile(
      spec,
      JSON.stringify({ name: 'c', processes: [{ name: 'main', args: ['/bin/sh', '-c', counter] }] }),
    )
    await km1sOk(n1, ['containers', 'create', '-f', spec])
    await new Promise((r) => setTimeout(r, 500))
    const exec = await sample(
      () => execTrue(client(n1)),
      () => execTrue(client(n2)),
    )
    const logs = await sample(
      () => logsTail(client(n1)),
      () => logsTail(client(n2)),
    )
    const row = (metric: string, p: number, s: { local: number[]; remote: number[] }): Row => ({
      metric,
      value: percentile(s.remote, p),
      unit: 'ms',
      baseline: percentile(s.local, p),
    })
    const rows: Row[] = [
      row('exec -- true, remote p50 (baseline: local)', 50, exec),
      row('exec -- true, remote p99', 99, exec),
      {
        metric: 'exec -- true, added by the remote hop p50',
        value: percentile(exec.remote, 50) - percentile(exec.local, 50),
        unit: 'ms',
      },
      row('logs --tail 1, remote p50 (baseline: local)', 50, logs),
      row('logs --tail 1, remote p99', 99, logs),
      {
        metric: 'logs --tail 1, added by the remote hop p50',
        value: percentile(logs.remote, 50) - percentile(logs.local, 50),
        unit: 'ms',
      },
    ]
    printRows('remote (n2 → n1) vs local (n1) requests through the control API', rows)
    const file = writeJson('remote', { started, runs: RUNS, rows, raw: { exec, logs } })
    log(`\nwrote ${file}`)
  } finally {
    await km1s(n1, ['containers', 'rm', 'c'])
    for (const n of cluster.nodes) await n.stop()
    await cluster.lab.down()
  }
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
