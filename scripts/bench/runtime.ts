// Runtime benchmark: create → process running (p50/p99) for 1 container at a time, for 20 in a row (each
// create while the ones before it run: the node fills up to 20) and for 20 at once, beside bare `crun run -d`
// of the same binary with the same kind of config in the same run (a ratio); stop latency; the agent's
// memory per running container. Needs root. Usage: scripts/bench/runtime [--quick]
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { detectOciRuntime } from '../../src/runtime/detect.ts'
import { prepareRootfs, presentSystemPaths } from '../../src/runtime/host.ts'
import { instanceId } from '../../src/runtime/names.ts'
import { ociConfig } from '../../src/runtime/oci.ts'
import { client, km1sOk, startAgent } from '../../test/lab/cluster.ts'
import { createLab } from '../../test/lab/lab.ts'
import { census, memoryCgroupCount, runtimeHarness } from '../../test/lab/runtime-fixture.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const SINGLE_RUNS = quick ? 20 : 50
const BATCH = 20
const BATCH_RUNS = quick ? 2 : 5
const log = (line: string) => process.stdout.write(`${line}\n`)
const MiB = 1024 * 1024

if (process.getuid?.() !== 0) {
  process.stderr.write('The runtime benchmark needs root (namespaces, cgroups, crun).\n')
  process.exit(1)
}

const spec = (name: string) => ({
  name,
  processes: [{ name: 'main', args: ['/bin/sleep', '600'], limits: { memoryBytes: 16 * MiB, pids: 16 } }],
})

/**
 * A read-only root with the host's system paths, the same limits as km1s's, and new namespaces (bare crun)
 * or the ones `namespaces` names (the floor's, joined from its pause).
 */
function benchConfig(
  base: string,
  id: string,
  namespaces: { network: string; uts: string; ipc: string } = { network: 'new', uts: 'new', ipc: 'new' },
): string {
  return JSON.stringify(
    ociConfig({
      container: 'bench',
      process: 'main',
      args: ['/bin/sleep', '600'],
      limits: { memoryBytes: 16 * MiB, pids: 16 },
      rootfs: join(base, 'rootfs'),
      hostname: 'bench',
      systemPaths: presentSystemPaths(),
      files: {
        hosts: join(base, 'hosts'),
        hostname: join(base, 'hostname'),
        resolvConf: join(base, 'resolv.conf'),
      },
      namespaces,
      cgroupsPath: `/${id}`,
    }),
  )
}

async function prepareBase(base: string): Promise<void> {
  rmSync(base, { recursive: true, force: true })
  mkdirSync(base, { recursive: true })
  await prepareRootfs(join(base, 'rootfs'))
  for (const f of ['hosts', 'hostname', 'resolv.conf']) writeFileSync(join(base, f), 'x\n')
}

/**
 * Bare crun: the same binary, a read-only root with the host's system paths, new namespaces, limits. One
 * `run` of it (and its kill + delete) at a time, so that the caller can interleave them with km1s's.
 */
async function bareCrun() {
  const oci = await detectOciRuntime()
  if (oci.binary === null) throw new Error(`no OCI runtime: ${oci.reason}`)
  const base = `/tmp/km1s-bench-bare-${process.pid}`
  await prepareBase(base)
  const argv = (...a: string[]) => [...oci.wrapper, oci.binary as string, ...a]
  /** BATCH containers' ids, each with its own bundle made. */
  const bundles = (what: string): string[] =>
    Array.from({ length: BATCH }, (_, i) => {
      const id = `km1s-bench-${what}-${process.pid}-${i}`
      mkdirSync(join(base, id))
      writeFileSync(join(base, id, 'config.json'), benchConfig(base, id))
      return id
    })
  const deleteAll = (ids: string[]): void => {
    for (const id of ids) {
      const [df, ...da] = argv('delete', '-f', id)
      spawnSync(df as string, da, { stdio: 'ignore' })
      rmSync(join(base, id), { recursive: true, force: true })
    }
  }
  return {
    once(i: number): { run: number; stop: number } {
      const id = `km1s-bench-bare-${process.pid}-${i}`
      writeFileSync(join(base, 'config.json'), benchConfig(base, id))
      const [file, ...args] = argv('run', '-d', '--bundle', base, id)
      let t = performance.now()
      // Files, not pipes: the detached container inherits crun's stdio and would hold a pipe open forever.
      const err = openSync(join(base, 'stderr'), 'w')
      const r = spawnSync(file as string, args, { stdio: ['ignore', 'ignore', err] })
      const run = performance.now() - t
      closeSync(err)
      if (r.status !== 0) throw new Error(`bare crun failed: ${readFileSync(join(base, 'stderr'), 'utf8')}`)
      const [kf, ...ka] = argv('kill', id, 'KILL')
      const [df, ...da] = argv('delete', '-f', id)
      t = performance.now()
      spawnSync(kf as string, ka, { stdio: 'ignore' })
      spawnSync(df as string, da, { stdio: 'ignore' })
      return { run, stop: performance.now() - t }
    },
    /** BATCH one after another, each kept running until all are (each from its own bundle). */
    row(r: number): number[] {
      const times: number[] = []
      const ids = bundles(`row-${r}`)
      for (const id of ids) {
        const [file, ...args] = argv('run', '-d', '--bundle', join(base, id), id)
        const t = performance.now()
        const res = spawnSync(file as string, args, { stdio: 'ignore' })
        times.push(performance.now() - t)
        if (res.status !== 0) throw new Error(`bare crun ${id} exited ${res.status}`)
      }
      deleteAll(ids)
      return times
    },
    /** BATCH at once (each from its own bundle), as km1s is asked for BATCH at once. */
    async batch(r: number): Promise<number[]> {
      const times: number[] = []
      const ids = bundles(`batch-${r}`)
      await Promise.all(
        ids.map(
          (id) =>
            new Promise<void>((resolve, reject) => {
              const [file, ...args] = argv('run', '-d', '--bundle', join(base, id), id)
              const t = performance.now()
              const child = spawn(file as string, args, { stdio: 'ignore' })
              child.on('exit', (code) => {
                times.push(performance.now() - t)
                code === 0 ? resolve() : reject(new Error(`bare crun ${id} exited ${code}`))
              })
            }),
        ),
      )
      deleteAll(ids)
      return times
    },
    close(): void {
      rmSync(base, { recursive: true, force: true })
    },
  }
}

// The floor: what the required parts cost when done by hand, with nothing of km1s — per container
// one small shell script that makes a pause (`unshare` + `catatonit -P`, holding new network, UTS and IPC
// namespaces, the hostname set), the veth on a bridge and the container's address and route (two `ip`
// batches, the host side through `nsenter` as km1s's pause does: `ip -n` would mount the name in a private
// mount namespace), writes the config joining the pause's namespaces, and execs the same `crun run -d` as
// the bare runs. No logs, no supervisor, no records, no overlap of the network with crun: a lower bound on
// the work any implementation of the issue pays here, beside which km1s's own share can be read.
const FLOOR_GATEWAY = '10.42.9.1'
const FLOOR_SCRIPT = [
  'b=$1; id=$2; addr=$3; veth=$4; hostns=$5; ns=$6; shift 6',
  `p=$(unshare --net --uts --ipc /bin/sh -c 'echo floor > /proc/sys/kernel/hostname && echo $$ && exec catatonit -P >/dev/null 2>&1 </dev/null' &)`,
  '[ -n "$p" ] || exit 1',
  'echo "$p" > "$b/pause.pid"',
  `printf 'netns attach %s %s\\nlink add %s type veth peer name eth0 netns %s\\nlink set dev %s master km1s0 up\\n' "$ns" "$p" "$veth" "$p" "$veth" | nsenter --net="/run/netns/$hostns" ip -batch - || exit 2`,
  `printf 'link set dev lo up\\naddr add %s/24 dev eth0\\nlink set dev eth0 up\\nroute add default via ${FLOOR_GATEWAY}\\n' "$addr" | ip -n "$ns" -batch - || exit 3`,
  // The config with the pause's pid in its three namespace paths, assembled by builtins.
  '{ printf %s "$C1" "$p" "$C2" "$p" "$C3" "$p" "$C4"; } > "$b/config.json" || exit 4',
  'exec "$@"',
].join('\n')
interface FloorContainer {
  n: number
  id: string
  dir: string
  env: Record<string, string>
}

async function floorRuns() {
  const oci = await detectOciRuntime()
  if (oci.binary === null) throw new Error(`no OCI runtime: ${oci.reason}`)
  const base = `/tmp/km1s-bench-floor-${process.pid}`
  const hostns = `km1s-bfloor-${process.pid}`
  await prepareBase(base)
  const made: FloorContainer[] = []
  const netns = (n: number) => `${hostns}-${n}`
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: 'ignore' })
  ip('netns', 'add', hostns)
  ip('-n', hostns, 'link', 'add', 'km1s0', 'type', 'bridge')
  ip('-n', hostns, 'addr', 'add', `${FLOOR_GATEWAY}/24`, 'dev', 'km1s0')
  ip('-n', hostns, 'link', 'set', 'km1s0', 'up')
  let count = 0
  const prepare = (): FloorContainer => {
    const n = count++
    const id = `km1s-bench-floor-${process.pid}-${n}`
    const dir = join(base, id)
    mkdirSync(dir)
    const config = benchConfig(base, id, {
      network: '/proc/@PID@/ns/net',
      uts: '/proc/@PID@/ns/uts',
      ipc: '/proc/@PID@/ns/ipc',
    })
    const [C1, C2, C3, C4] = config.split('@PID@') as [string, string, string, string]
    const c = {
      n,
      id,
      dir,
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', C1, C2, C3, C4 },
    }
    made.push(c)
    return c
  }
  const run = (c: FloorContainer) =>
    new Promise<number>((resolve, reject) => {
      const argv = [
        c.dir,
        c.id,
        `10.42.9.${(c.n % 250) + 2}`,
        `kbf${process.pid % 100000}x${c.n}`.slice(0, 15),
        hostns,
        netns(c.n),
        ...oci.wrapper,
        oci.binary as string,
        'run',
        '-d',
        '--bundle',
        c.dir,
        c.id,
      ]
      const t = performance.now()
      // Files, not pipes: the detached container inherits crun's stdio (as for bare crun).
      const err = openSync(join(c.dir, 'stderr'), 'w')
      const child = spawn('/bin/sh', ['-c', FLOOR_SCRIPT, 'km1s-bench-floor', ...argv], {
        env: c.env,
        stdio: ['ignore', 'ignore', err],
      })
      closeSync(err)
      child.on('exit', (code) => {
        const ms = performance.now() - t
        code === 0
          ? resolve(ms)
          : reject(new Error(`floor ${c.id} exited ${code}: ${readFileSync(join(c.dir, 'stderr'), 'utf8')}`))
      })
    })
  const remove = (c: FloorContainer) => {
    const [df, ...da] = [...oci.wrapper, oci.binary as string, 'delete', '-f', c.id]
    spawnSync(df as string, da, { stdio: 'ignore' })
    try {
      process.kill(Number(readFileSync(join(c.dir, 'pause.pid'), 'utf8')), 'SIGKILL')
    } catch {
      // never made, or gone
    }
    spawnSync('ip', ['netns', 'del', netns(c.n)], { stdio: 'ignore' })
    rmSync(c.dir, { recursive: true, force: true })
    made.splice(made.indexOf(c), 1)
  }
  return {
    async once(): Promise<number> {
      const c = prepare()
      try {
        return await run(c)
      } finally {
        remove(c)
      }
    },
    async row(): Promise<number[]> {
      const cs = Array.from({ length: BATCH }, prepare)
      const times: number[] = []
      try {
        for (const c of cs) times.push(await run(c))
      } finally {
        cs.forEach(remove)
      }
      return times
    },
    async batch(): Promise<number[]> {
      const cs = Array.from({ length: BATCH }, prepare)
      try {
        return await Promise.all(cs.map(run))
      } finally {
        cs.forEach(remove)
      }
    },
    close(): void {
      for (const c of [...made]) remove(c)
      spawnSync('ip', ['netns', 'del', hostns], { stdio: 'ignore' })
      rmSync(base, { recursive: true, force: true })
    },
  }
}

/**
 * What keeps the containers going outside the agent — shims, waiting `crun run`s, pause processes — as
 * PSS (shared library pages divided among their users; RSS would count libc once per process).
 */
function supervisionPss(runDir: string): number {
  let total = 0
  for (const line of execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' }).split('\n')) {
    const pid = line.trim().split(/\s+/)[0]
    if (!pid || !(line.includes(runDir) || line.includes(' catatonit -P'))) continue
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
      total += Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024
    } catch {
      // gone meanwhile
    }
  }
  return total
}

/**
 * km1s and bare crun, interleaved: one bare run, then one km1s create (and remove); one bare batch, then one
 * km1s batch. Other load on the machine (the lab shares it) then weighs on both sides of each ratio alike.
 */
async function latencies(): Promise<{
  bare: { run: number[]; stop: number[] }
  bareRow: number[]
  bareBatch: number[]
  floor: { single: number[]; row: number[]; batch: number[] }
  km1s: {
    single: number[]
    row: number[]
    batch: number[]
    stop: number[]
    leftovers: number
    dyingMemcgsPerContainer: number
  }
}> {
  const bare = await bareCrun()
  const floor = await floorRuns()
  const f = { single: [] as number[], row: [] as number[], batch: [] as number[] }
  const h = await runtimeHarness('oci')
  const memcgsBefore = memoryCgroupCount()
  const b = { run: [] as number[], stop: [] as number[] }
  const bareRow: number[] = []
  const bareBatch: number[] = []
  const single: number[] = []
  const row: number[] = []
  const batch: number[] = []
  const stop: number[] = []
  try {
    // Warm-up: the first create pays for the bridge and the caches; the first bare run for its own.
    bare.once(-1)
    await floor.once()
    await h.runtime.create(spec('warm'))
    await h.runtime.remove('warm')
    for (let i = 0; i < SINGLE_RUNS; i++) {
      const one = bare.once(i)
      b.run.push(one.run)
      b.stop.push(one.stop)
      f.single.push(await floor.once())
      const t = performance.now()
      const s = await h.runtime.create(spec(`one-${i}`))
      single.push(performance.now() - t)
      if (s.processes[0]?.state !== 'running') throw new Error(`one-${i}: ${JSON.stringify(s)}`)
      const t2 = performance.now()
      await h.runtime.remove(`one-${i}`)
      stop.push(performance.now() - t2)
    }
    for (let r = 0; r < BATCH_RUNS; r++) {
      bareRow.push(...bare.row(r))
      f.row.push(...(await floor.row()))
      const names = Array.from({ length: BATCH }, (_, i) => `r${r}-${i}`)
      for (const n of names) {
        const t = performance.now()
        const s = await h.runtime.create(spec(n))
        row.push(performance.now() - t)
        if (s.processes[0]?.state !== 'running') throw new Error(`${n}: ${JSON.stringify(s)}`)
      }
      await Promise.all(names.map((n) => h.runtime.remove(n)))
    }
    for (let r = 0; r < BATCH_RUNS; r++) {
      bareBatch.push(...(await bare.batch(r)))
      f.batch.push(...(await floor.batch()))
      const names = Array.from({ length: BATCH }, (_, i) => `b${r}-${i}`)
      await Promise.all(
        names.map(async (n) => {
          const t = performance.now()
          const s = await h.runtime.create(spec(n))
          batch.push(performance.now() - t)
          if (s.processes[0]?.state !== 'running') throw new Error(`${n}: ${JSON.stringify(s)}`)
        }),
      )
      await Promise.all(names.map((n) => h.runtime.remove(n)))
    }
  } finally {
    bare.close()
    floor.close()
    await h.destroy()
  }
  const left = Object.values(census(h.instance, h.dir, undefined)).flat().length
  await new Promise((r) => setTimeout(r, 2000))
  const memcgs = memoryCgroupCount()
  const made = SINGLE_RUNS + 1 + 2 * BATCH_RUNS * BATCH
  const dying = memcgs === null || memcgsBefore === null ? Number.NaN : (memcgs - memcgsBefore) / made
  return {
    bare: b,
    bareRow,
    bareBatch,
    floor: f,
    km1s: { single, row, batch, stop, leftovers: left, dyingMemcgsPerContainer: dying },
  }
}

async function agentMemory(): Promise<{
  idle: number
  loaded: number
  containers: number
  supervision: number
}> {
  const lab = await createLab({ nodes: 1, name: 'rtbench' })
  const node = lab.node(1)
  try {
    await km1sOk(node, ['init', '--name', node.name])
    await startAgent(node, { runtime: 'oci' })
    const rss = async () => (await client(node).status()).memory.rss
    await new Promise((r) => setTimeout(r, 3000))
    const idle = await rss()
    const specFile = (n: string) => {
      const f = join(lab.dir, `${n}.json`)
      writeFileSync(f, JSON.stringify(spec(n)))
      return f
    }
    for (let i = 0; i < BATCH; i++) await km1sOk(node, ['containers', 'create', '-f', specFile(`m${i}`)])
    await new Promise((r) => setTimeout(r, 3000))
    const loaded = await rss()
    const supervision = supervisionPss(join(node.dataDir, '..', `${node.name}-run`))
    for (let i = 0; i < BATCH; i++) await km1sOk(node, ['containers', 'rm', `m${i}`])
    const id = JSON.parse(await km1sOk(node, ['status', '--json'])).id
    await node.stop()
    const left = census(instanceId(id), join(node.dataDir, '..', `${node.name}-run`), undefined)
    if (Object.values(left).flat().length > 0) log(`leftovers after the memory run: ${JSON.stringify(left)}`)
    return { idle, loaded, containers: BATCH, supervision }
  } finally {
    await lab.down()
  }
}

async function main(): Promise<void> {
  const started = new Date().toISOString()
  log(
    `runtime benchmark (${quick ? 'quick' : 'full'}): ${SINGLE_RUNS} single creates, ${BATCH_RUNS}× ${BATCH} in a row, ${BATCH_RUNS}× ${BATCH} at once`,
  )
  const { bare, bareRow, bareBatch, floor, km1s: k } = await latencies()
  log(
    `bare crun: p50 ${percentile(bare.run, 50).toFixed(1)} ms; km1s: p50 ${percentile(k.single, 50).toFixed(1)} ms`,
  )
  const mem = await agentMemory()
  const perContainer = (mem.loaded - mem.idle) / mem.containers
  const bareP50 = percentile(bare.run, 50)
  const bareP99 = percentile(bare.run, 99)
  const rows: Row[] = [
    {
      metric: 'create→running p50, 1 at a time',
      value: percentile(k.single, 50),
      unit: 'ms',
      baseline: bareP50,
      target: '≤ 1.5× bare crun',
    },
    {
      metric: 'create→running p99, 1 at a time',
      value: percentile(k.single, 99),
      unit: 'ms',
      baseline: bareP99,
      target: '≤ 100 ms',
    },
    {
      metric: `create→running p50, ${BATCH} in a row`,
      value: percentile(k.row, 50),
      unit: 'ms',
      baseline: percentile(bareRow, 50),
      target: '≤ 1.5× bare crun',
    },
    {
      metric: `create→running p99, ${BATCH} in a row`,
      value: percentile(k.row, 99),
      unit: 'ms',
      baseline: percentile(bareRow, 99),
      target: '≤ 100 ms',
    },
    {
      metric: `create→running p50, ${BATCH} at once`,
      value: percentile(k.batch, 50),
      unit: 'ms',
      baseline: percentile(bareBatch, 50),
      target: `≤ 1.5× ${BATCH} bare cruns at once`,
    },
    {
      metric: `create→running p99, ${BATCH} at once`,
      value: percentile(k.batch, 99),
      unit: 'ms',
      baseline: percentile(bareBatch, 99),
    },
    // The floor (floorRuns) against bare crun, then km1s against the floor: what the required parts cost
    // by themselves, and what km1s adds to them.
    ...(
      [
        ['1 at a time', floor.single, bare.run, k.single],
        [`${BATCH} in a row`, floor.row, bareRow, k.row],
        [`${BATCH} at once`, floor.batch, bareBatch, k.batch],
      ] as const
    ).flatMap(([what, byHand, bareTimes, km1sTimes]) => [
      {
        metric: `required parts by hand p50, ${what} (vs bare)`,
        value: percentile([...byHand], 50),
        unit: 'ms',
        baseline: percentile([...bareTimes], 50),
      },
      {
        metric: `km1s p50, ${what} (vs by hand)`,
        value: percentile([...km1sTimes], 50),
        unit: 'ms',
        baseline: percentile([...byHand], 50),
      },
    ]),
    {
      metric: 'stop+remove p50 (TERM; sleep exits at once)',
      value: percentile(k.stop, 50),
      unit: 'ms',
      baseline: percentile(bare.stop, 50),
    },
    {
      metric: 'stop+remove p99',
      value: percentile(k.stop, 99),
      unit: 'ms',
      baseline: percentile(bare.stop, 99),
    },
    { metric: 'agent RSS, idle with the runtime', value: mem.idle / MiB, unit: 'MiB' },
    { metric: `agent RSS per running container (${BATCH})`, value: perContainer / MiB, unit: 'MiB' },
    {
      metric: 'shim + crun run + pause PSS per container',
      value: mem.supervision / mem.containers / MiB,
      unit: 'MiB',
    },
    { metric: 'leftovers after the latency runs', value: k.leftovers, unit: 'resources', target: '0' },
    {
      metric: 'memory cgroups left per container (dying ones)',
      value: k.dyingMemcgsPerContainer,
      unit: 'cgroups',
      target: '0',
    },
  ]
  printRows('km1s runtime (oci) vs bare crun run -d', rows)
  const file = writeJson('runtime', {
    started,
    quick,
    rows,
    raw: { bare, bareRow, bareBatch, floor, km1s: k, memory: mem },
  })
  log(`\nwrote ${file}`)
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
