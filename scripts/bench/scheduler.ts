// Scheduler benchmark: `km1s run` → every replica running (p50/p99) on 5 and 10 nodes, beside a bare runtime
// create on one node in the same run (the floor: what placement, gossip and status records add is the
// ratio); a node killed with -9 → its replica running elsewhere; a heal → the surplus stopped; an offline
// cold boot → its replicas running. Needs root. Usage: scripts/bench/scheduler [--quick]
// With an artifact (a 4 MiB directory pushed on n1, run as /app/run.sh): cached (every node already holds
// it) and not cached (a fresh artifact per run, pulled by the nodes its replicas land on).
import { randomBytes } from 'node:crypto'
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { ApiClient } from '../../src/api/client.ts'
import type { ReplicaView } from '../../src/api/schemas.ts'
import { normalizeWorkload } from '../../src/scheduler/workload.ts'
import {
  agentArgs,
  type Cluster,
  client,
  km1sOk,
  startAgent,
  startCluster,
  waitForAlive,
} from '../../test/lab/cluster.ts'
import { type LabNode, waitFor } from '../../test/lab/lab.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const RUNS = quick ? 8 : 20
const FAILURES = quick ? 2 : 4
const REPLICAS = 3
const log = (line: string) => process.stdout.write(`${line}\n`)

if (process.getuid?.() !== 0) {
  process.stderr.write('The scheduler benchmark needs root (namespaces, cgroups, crun).\n')
  process.exit(1)
}

const workload = (name: string, replicas = REPLICAS) =>
  normalizeWorkload({ name, replicas, memory: '16Mi', command: ['/bin/sleep', '600'] })

const running = (rows: ReplicaView[], w: string) =>
  rows.filter((r) => r.workload === w && r.state === 'running')
const indices = (rows: ReplicaView[]) => new Set(rows.map((r) => r.index)).size

/** Polls `api` until `done(rows)`; returns the ms it took from `t0`. */
async function until(api: ApiClient, t0: number, done: (rows: ReplicaView[]) => boolean, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const rows = await api.ps().catch(() => [])
    if (done(rows)) return performance.now() - t0
    if (Date.now() > deadline)
      throw new Error(`timed out: ${rows.map((r) => `${r.name}@${r.node}:${r.state}`).join(' ')}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** Waits for every node to see every node alive again; says so (a mesh matter) when one does not. */
async function settle(nodes: LabNode[], after = 'a heal'): Promise<void> {
  try {
    await waitForAlive(nodes, nodes, 30_000)
  } catch (err) {
    log(`warning: views did not agree 30 s after ${after}: ${String(err).slice(0, 400)}`)
  }
}

async function removeAll(api: ApiClient, names: string[]) {
  for (const n of names) await api.removeWorkload(n).catch(() => {})
  await until(api, performance.now(), (rows) => rows.every((r) => !names.includes(r.workload)))
}

async function runToRunning(c: Cluster): Promise<{ run: number[]; bare: number[] }> {
  const nodes = c.nodes
  const run: number[] = []
  const bare: number[] = []
  for (let i = 0; i < RUNS; i++) {
    // From a different node each time: every node may be asked.
    const api = client(nodes[i % nodes.length] as LabNode)
    const name = `b${i}`
    const t0 = performance.now()
    await api.putWorkload(workload(name))
    run.push(await until(api, t0, (rows) => indices(running(rows, name)) === REPLICAS))
    await removeAll(api, [name])
    // The floor in the same run: the runtime alone, one container on one node.
    const one = client(nodes[0] as LabNode)
    const t1 = performance.now()
    await one.createContainer({
      name: `bare${i}`,
      processes: [{ name: 'main', args: ['/bin/sleep', '600'] }],
    })
    await waitFor(
      'bare running',
      async () => (await one.containers()).find((x) => x.name === `bare${i}`)?.state === 'running',
      {
        intervalMs: 5,
      },
    )
    bare.push(performance.now() - t1)
    await one.removeContainer(`bare${i}`)
  }
  return { run, bare }
}

/** A 4 MiB artifact directory whose script sleeps; `seed` makes its content (and so its CID) unique. */
async function writeApp(dir: string, seed: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'run.sh'), `#!/bin/sh\n# ${seed}\nexec sleep 600\n`, { mode: 0o755 })
  await writeFile(join(dir, 'data.bin'), randomBytes(4 << 20))
}

/** run → running with an artifact: cached on every node already, or new each run (pulled first). */
async function runWithArtifact(c: Cluster, cached: boolean): Promise<number[]> {
  const nodes = c.nodes
  const n1 = nodes[0] as LabNode
  const dir = join(c.lab.dir, 'bench-app')
  const out: number[] = []
  if (cached) {
    await writeApp(dir, 'warm')
    await km1sOk(n1, ['push', dir, '--name', 'bapp:warm'])
    // Every node pulls it once: one replica per node.
    const api = client(n1)
    const warm = normalizeWorkload({
      name: 'warm',
      replicas: nodes.length,
      memory: '16Mi',
      artifact: 'bapp:warm',
      command: ['/app/run.sh'],
    })
    await api.putWorkload(warm)
    await until(api, performance.now(), (rows) => indices(running(rows, 'warm')) === nodes.length, 120_000)
    await removeAll(api, ['warm'])
  }
  for (let i = 0; i < RUNS; i++) {
    let ref = 'bapp:warm'
    if (!cached) {
      await writeApp(dir, `run ${i}`)
      ref = `bapp:${i}`
      await km1sOk(n1, ['push', dir, '--name', ref])
    }
    const api = client(nodes[(i + 1) % nodes.length] as LabNode)
    const name = `${cached ? 'ac' : 'an'}${i}`
    const w = normalizeWorkload({
      name,
      replicas: REPLICAS,
      memory: '16Mi',
      artifact: ref,
      command: ['/app/run.sh'],
    })
    const t0 = performance.now()
    await api.putWorkload(w)
    out.push(await until(api, t0, (rows) => indices(running(rows, name)) === REPLICAS))
    await removeAll(api, [name])
  }
  return out
}

async function nodeDeath(c: Cluster): Promise<number[]> {
  const nodes = c.nodes
  const observer = client(nodes[0] as LabNode)
  const out: number[] = []
  await observer.putWorkload(workload('dead', REPLICAS))
  await until(observer, performance.now(), (rows) => indices(running(rows, 'dead')) === REPLICAS)
  for (let i = 0; i < FAILURES; i++) {
    const rows = running(await observer.ps(), 'dead')
    const victimRow = rows.find((r) => r.node !== nodes[0]?.name) as ReplicaView
    const victim = nodes.find((n) => n.name === victimRow.node) as LabNode
    const t0 = performance.now()
    await victim.kill('SIGKILL')
    out.push(
      await until(observer, t0, (now) =>
        now.some((r) => r.index === victimRow.index && r.node !== victim.name && r.state === 'running'),
      ),
    )
    await startAgent(victim, { runtime: 'oci', extraArgs: agentArgs(victim) })
    await waitForAlive(nodes, nodes, 60_000)
    await until(observer, performance.now(), (now) => {
      const d = now.filter((r) => r.workload === 'dead')
      return d.length === REPLICAS && indices(running(d, 'dead')) === REPLICAS
    })
  }
  await removeAll(observer, ['dead'])
  return out
}

async function healSurplus(c: Cluster): Promise<number[]> {
  const nodes = c.nodes
  const half = Math.floor(nodes.length / 2)
  const a = nodes.slice(0, half)
  const b = nodes.slice(half)
  const observer = client(nodes[0] as LabNode)
  const out: number[] = []
  await observer.putWorkload(workload('split', REPLICAS))
  await until(observer, performance.now(), (rows) => indices(running(rows, 'split')) === REPLICAS)
  for (let i = 0; i < FAILURES; i++) {
    await c.lab.partition(a, b)
    for (const side of [a, b]) await settle(side, 'a partition')
    for (const side of [a, b]) {
      const names = new Set(side.map((n) => n.name))
      await until(
        client(side[0] as LabNode),
        performance.now(),
        (rows) => indices(running(rows, 'split').filter((r) => names.has(r.node))) === REPLICAS,
      )
    }
    const t0 = performance.now()
    await c.lab.heal()
    out.push(
      await until(observer, t0, (rows) => {
        const s = rows.filter((r) => r.workload === 'split')
        return s.length === REPLICAS && indices(running(s, 'split')) === REPLICAS
      }),
    )
    await settle(nodes)
  }
  await removeAll(observer, ['split'])
  return out
}

async function coldBoot(c: Cluster): Promise<number> {
  const nodes = c.nodes
  const lone = nodes.at(-1) as LabNode
  const others = nodes.filter((n) => n !== lone)
  const observer = client(nodes[0] as LabNode)
  await observer.putWorkload(workload('cold', REPLICAS))
  await until(observer, performance.now(), (rows) => indices(running(rows, 'cold')) === REPLICAS)
  await c.lab.partition([lone], others)
  await lone.stop()
  const records = join(lone.dataDir, 'runtime', 'containers')
  for (const f of await readdir(records).catch(() => [])) await rm(join(records, f), { force: true })
  const t0 = performance.now()
  await startAgent(lone, { runtime: 'oci', extraArgs: agentArgs(lone) })
  const ms = await until(
    client(lone),
    t0,
    (rows) => indices(running(rows, 'cold').filter((r) => r.node === lone.name)) === REPLICAS,
  )
  await c.lab.heal()
  await settle(nodes)
  await removeAll(observer, ['cold'])
  return ms
}

async function bench(size: number): Promise<Row[]> {
  log(`starting ${size} nodes…`)
  const c = await startCluster(size, { name: `bsch${size}`, agent: { runtime: 'oci' } })
  try {
    await waitForAlive(c.nodes, c.nodes, 60_000)
    const { run, bare } = await runToRunning(c)
    log(`run → running: ${run.map((x) => Math.round(x)).join(' ')} ms`)
    const cachedRun = await runWithArtifact(c, true)
    log(`run → running, artifact cached: ${cachedRun.map((x) => Math.round(x)).join(' ')} ms`)
    const freshRun = await runWithArtifact(c, false)
    log(`run → running, artifact not cached (4 MiB): ${freshRun.map((x) => Math.round(x)).join(' ')} ms`)
    const death = await nodeDeath(c)
    log(`kill -9 → replacement: ${death.map((x) => Math.round(x)).join(' ')} ms`)
    const heal = await healSurplus(c)
    log(`heal → surplus stopped: ${heal.map((x) => Math.round(x)).join(' ')} ms`)
    const cold = await coldBoot(c)
    log(`offline cold boot → running: ${Math.round(cold)} ms`)
    const bareP50 = percentile(bare, 50)
    const bareP99 = percentile(bare, 99)
    return [
      {
        metric: `${size} nodes: run → ${REPLICAS} running p50`,
        value: percentile(run, 50),
        unit: 'ms',
        baseline: bareP50,
      },
      {
        metric: `${size} nodes: run → ${REPLICAS} running p99`,
        value: percentile(run, 99),
        unit: 'ms',
        baseline: bareP99,
        target: '≤ 1000',
      },
      {
        metric: `${size} nodes: run → running, artifact cached, p50`,
        value: percentile(cachedRun, 50),
        unit: 'ms',
        baseline: bareP50,
      },
      {
        metric: `${size} nodes: run → running, artifact cached, p99`,
        value: percentile(cachedRun, 99),
        unit: 'ms',
        baseline: bareP99,
        target: '≤ 1000',
      },
      {
        metric: `${size} nodes: run → running, artifact not cached (4 MiB), p50`,
        value: percentile(freshRun, 50),
        unit: 'ms',
      },
      {
        metric: `${size} nodes: run → running, artifact not cached (4 MiB), p99`,
        value: percentile(freshRun, 99),
        unit: 'ms',
      },
      { metric: `${size} nodes: kill -9 → replacement p50`, value: percentile(death, 50), unit: 'ms' },
      {
        metric: `${size} nodes: kill -9 → replacement max`,
        value: Math.max(...death),
        unit: 'ms',
        target: '≤ 10000',
      },
      { metric: `${size} nodes: heal → surplus stopped p50`, value: percentile(heal, 50), unit: 'ms' },
      { metric: `${size} nodes: heal → surplus stopped max`, value: Math.max(...heal), unit: 'ms' },
      { metric: `${size} nodes: offline cold boot → running`, value: cold, unit: 'ms', target: '≤ 10000' },
    ]
  } finally {
    for (const n of c.nodes) {
      // Leave nothing running: workloads' containers outlive an agent's stop by design.
      const api = client(n)
      for (const w of await api.workloads().catch(() => [])) await api.removeWorkload(w.name).catch(() => {})
    }
    await Promise.all(
      c.nodes.map((n) =>
        waitFor(`${n.name} empty`, async () => (await client(n).containers()).length === 0, {
          timeoutMs: 30_000,
        }).catch(() => {}),
      ),
    )
    await c.lab.down()
  }
}

const rows: Row[] = []
for (const size of [5, 10]) rows.push(...(await bench(size)))
printRows(
  `Scheduler (${RUNS} runs of ${REPLICAS} replicas; baseline: one bare runtime create on one node, same run)`,
  rows,
)
log(`wrote ${writeJson('scheduler', { quick, runs: RUNS, replicas: REPLICAS, rows })}`)
