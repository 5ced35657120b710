// Shared by the runtime tests: a runtime of either kind in a throw-away place, and the census of every host
// resource that carries an instance's prefix — what "nothing leaked" means, checked the same way everywhere.
import { execFileSync } from 'node:child_process'
import { type Dirent, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '../../src/common/logger.ts'
import { detectOciRuntime } from '../../src/runtime/detect.ts'
import { RuntimeNames } from '../../src/runtime/names.ts'
import { ContainerRuntime } from '../../src/runtime/runtime.ts'

export const isRoot = process.getuid?.() === 0

let counter = 0
/** 6 hex characters unique to this test process and call. */
export function testInstance(): string {
  counter++
  return ((process.pid * 16 + counter) % 0xffffff).toString(16).padStart(6, '0')
}

export interface RuntimeHarness {
  kind: 'oci' | 'process'
  instance: string
  dir: string
  hostNetns: string | undefined
  names: RuntimeNames
  runtime: ContainerRuntime
  /** A new runtime on the same directories, as an agent restart makes. */
  restart(): Promise<ContainerRuntime>
  /** Removes every container, then everything of the instance, the namespace and the directory. */
  destroy(): Promise<void>
}

export async function runtimeHarness(kind: 'oci' | 'process'): Promise<RuntimeHarness> {
  const instance = testInstance()
  const dir = await mkdtemp(join(tmpdir(), `km1s-rt-${instance}-`))
  const names = new RuntimeNames({
    instance,
    runRoot: join(dir, 'run'),
    dataDir: join(dir, 'data'),
    logRoot: join(dir, 'logs'),
  })
  let hostNetns: string | undefined
  if (kind === 'oci') {
    // The node's side of the container network lives in a namespace of the test, never the root one.
    hostNetns = `km1s-t${instance}-host`
    execFileSync('ip', ['netns', 'add', hostNetns])
  }
  const oci = kind === 'oci' ? await detectOciRuntime() : undefined
  const log = createLogger({ level: process.env.KM1S_TEST_LOG === '1' ? 'debug' : 'silent' })
  const make = () => new ContainerRuntime({ kind, names, log, oci, hostNetns, adoptPollMs: 50 })
  const h: RuntimeHarness = {
    kind,
    instance,
    dir,
    hostNetns,
    names,
    runtime: make(),
    async restart() {
      await h.runtime.stop()
      h.runtime = make()
      await h.runtime.start()
      return h.runtime
    },
    async destroy() {
      try {
        for (const c of h.runtime.list()) await h.runtime.remove(c.name).catch(() => {})
        await h.runtime.stop()
        // A fresh start with nothing wanted sweeps whatever a failed test left.
        await rm(names.specDir, { recursive: true, force: true })
        const sweeper = make()
        await sweeper.start()
        await sweeper.stop()
      } finally {
        if (hostNetns) execFileSync('ip', ['netns', 'del', hostNetns])
        await rm(dir, { recursive: true, force: true })
      }
    },
  }
  await h.runtime.start()
  return h
}

/** Paths below `dir` (up to `depth` levels) whose last part starts with `prefix`. */
export function findNamed(dir: string, prefix: string, depth: number): string[] {
  if (depth < 0) return []
  let entries: Dirent[] = []
  try {
    entries = readdirSync(dir, { withFileTypes: true })
  } catch {
    return []
  }
  return entries.flatMap((e) => {
    const path = join(dir, e.name)
    const own = e.name.startsWith(prefix) ? [path] : []
    return e.isDirectory() && own.length === 0 ? findNamed(path, prefix, depth - 1) : own
  })
}

/**
 * Every resource of the instance on this host, by kind: network namespaces, veths (in `hostNetns`),
 * cgroups, OCI state, mounts, processes. `containers` lists the container names each kind refers to.
 */
export interface Census {
  netns: string[]
  veths: string[]
  cgroups: string[]
  oci: string[]
  mounts: string[]
  processes: string[]
}

export function census(instance: string, runDir: string, hostNetns?: string): Census {
  const prefix = `km1s-${instance}`
  const ps = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    // The agent names the run directory in its own arguments: it is not a leftover.
    .filter((line) => line.includes(runDir) && !line.includes('--run-dir'))
    .map((l) => l.trim())
  const veths =
    hostNetns && readdirSafe('/run/netns').includes(hostNetns)
      ? execFileSync('ip', ['-n', hostNetns, '-o', 'link', 'show'], { encoding: 'utf8' })
          .split('\n')
          .map((l) => l.split(': ')[1]?.split('@')[0] ?? '')
          .filter((n) => /^km1s[0-9a-f]{11}$/.test(n))
      : []
  return {
    netns: readdirSafe('/run/netns').filter((n) => n.startsWith(`${prefix}-`)),
    veths,
    cgroups: findNamed('/sys/fs/cgroup', prefix, 1).map((p) => p.replace('/sys/fs/cgroup/', '')),
    oci: [...readdirSafe('/run/crun'), ...readdirSafe('/run/runc')].filter((n) => n.startsWith(`${prefix}-`)),
    mounts: readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .filter((l) => l.includes(prefix)),
    processes: ps,
  }
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir)
  } catch {
    return []
  }
}

/**
 * The memory hierarchy's cgroups, dying ones included (v1 and hybrid; null where there is none): the
 * cgroups the kernel still holds after their removal show up here and nowhere else.
 */
export function memoryCgroupCount(): number | null {
  const line = /^memory\s+(\d+)\s+(\d+)/m.exec(readFileSync('/proc/cgroups', 'utf8'))
  return line === null || line[1] === '0' ? null : Number(line[2])
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

export async function until<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const last = await fn()
    if (last) return last
    await sleep(25)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
}
