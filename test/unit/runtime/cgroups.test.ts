import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { constants } from 'node:fs'
import { access, mkdir, mkdtemp, readdir, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { pino } from 'pino'
import {
  Cgroups,
  detectCgroupLayout,
  hierarchiesFromMounts,
  keyedValue,
  OCI_LEAF,
  ownCgroup,
  parsePids,
  v1CpuQuota,
  v1MemoryWriteOrder,
  v2CpuMax,
  validateCgroupLimits,
  validateCgroupPath,
} from '../../../src/runtime/cgroups.ts'

const MiB = 1024 * 1024

/** A logger that keeps what it was told, to check warnings. */
function captureLog(): { log: pino.Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = []
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) })
  return { log, lines }
}
const warnings = (lines: Array<{ level: number; msg: string }>) =>
  lines.filter((l) => l.level === 40).map((l) => l.msg)

const HYBRID_MOUNTS = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /var/lib/other/memory cgroup rw,memory 0 0`
const PI_MOUNTS = `proc /proc proc rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0`
const V1_MOUNTS = `cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0`

describe('cgroup helpers', () => {
  it('finds the hierarchies of a hybrid, a pure v2 and a v1 layout', () => {
    const hybrid = hierarchiesFromMounts(HYBRID_MOUNTS)
    assert.equal(hybrid.layout, 'hybrid')
    assert.equal(hybrid.unified, '/sys/fs/cgroup/unified')
    assert.equal(hybrid.v1.get('memory'), '/sys/fs/cgroup/memory')
    assert.equal(hybrid.v1.get('cpu'), '/sys/fs/cgroup/cpu')
    assert.ok(hybrid.all.includes('/sys/fs/cgroup/systemd'), 'named hierarchies are swept too')
    assert.ok(!hybrid.all.includes('/var/lib/other/memory'), 'mounts elsewhere are not ours')
    assert.equal(hybrid.all.length, 8)

    const pi = hierarchiesFromMounts(PI_MOUNTS)
    assert.deepEqual(
      { layout: pi.layout, unified: pi.unified, all: pi.all, v1: pi.v1.size },
      {
        layout: 'v2',
        unified: '/sys/fs/cgroup',
        all: ['/sys/fs/cgroup'],
        v1: 0,
      },
    )

    const v1 = hierarchiesFromMounts(V1_MOUNTS)
    assert.equal(v1.layout, 'v1')
    assert.equal(v1.v1.get('cpu'), '/sys/fs/cgroup/cpu,cpuacct')
    assert.equal(v1.v1.get('cpuacct'), '/sys/fs/cgroup/cpu,cpuacct')
    assert.equal(hierarchiesFromMounts('proc /proc proc rw 0 0').layout, 'none')
  })

  it('agrees with the mounts of this machine', async () => {
    const mounts = await readFile('/proc/mounts', 'utf8').catch(() => '')
    assert.equal(await detectCgroupLayout('/sys/fs/cgroup', mounts), hierarchiesFromMounts(mounts).layout)
    assert.equal(await detectCgroupLayout('/nowhere'), 'none')
  })

  it('accepts km1s cgroup paths and nothing else', () => {
    for (const ok of [
      '/km1s-ab12cd',
      '/km1s-ab12cd/web/main',
      '/km1s-ab12cd/web/_shim',
      '/km1s-probe-1-2/oci',
    ])
      assert.equal(validateCgroupPath(ok), ok)
    for (const bad of [
      '',
      '/',
      '/km1s-',
      'km1s-ab/c',
      '/km1sab',
      '/other/km1s-a',
      '/km1s-a/',
      '/km1s-a//b',
      '/km1s-a/../../etc',
      '/km1s-a/b..c',
      '/km1s-a/.hidden',
      '/km1s-A',
      '/km1s-a/b c',
    ])
      assert.throws(() => validateCgroupPath(bad), { code: 'ERR_INVALID_CGROUP_PATH' }, bad)
    fc.assert(
      fc.property(fc.string(), fc.string(), (a, b) => {
        assert.throws(() => validateCgroupPath(`/km1s-x/${a}..${b}`), { code: 'ERR_INVALID_CGROUP_PATH' })
      }),
    )
    const segment = fc.stringMatching(/^[a-z0-9_][a-z0-9-]{0,20}$/)
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 4 }), (parts) => {
        const path = ['/km1s-x', ...parts].join('/')
        assert.equal(validateCgroupPath(path), path)
      }),
    )
  })

  it('validates limits', () => {
    assert.deepEqual(validateCgroupLimits({ memoryBytes: 8 * MiB, pids: 1 }), {
      memoryBytes: 8 * MiB,
      pids: 1,
    })
    for (const bad of [
      { memoryBytes: MiB, pids: 1 },
      { memoryBytes: 8 * MiB, pids: 0 },
      { memoryBytes: 8 * MiB, pids: 1, cpuMillicores: 5 },
      { memoryBytes: 8 * MiB + 0.5, pids: 1 },
    ])
      assert.throws(() => validateCgroupLimits(bad), { code: 'ERR_INVALID_CGROUP_LIMITS' })
  })

  it('computes the values the kernel files take', () => {
    assert.equal(v1CpuQuota(250), '25000')
    assert.equal(v1CpuQuota(undefined), '-1')
    assert.equal(v2CpuMax(1500), '150000 100000')
    assert.equal(v2CpuMax(undefined), 'max 100000')
    assert.deepEqual(v1MemoryWriteOrder(null, 8 * MiB), ['memory', 'memsw'])
    assert.deepEqual(v1MemoryWriteOrder(16 * MiB, 8 * MiB), ['memory', 'memsw'])
    assert.deepEqual(v1MemoryWriteOrder(8 * MiB, 16 * MiB), ['memsw', 'memory'])
    assert.equal(keyedValue('oom_kill_disable 0\nunder_oom 0\noom_kill 3\n', 'oom_kill'), 3)
    assert.equal(keyedValue('low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n', 'oom_kill'), 1)
    assert.equal(keyedValue('oom 2\n', 'oom_kill'), null)
    assert.deepEqual(parsePids('12\n7\n\n'), [12, 7])
  })
})

describe('ownCgroup', () => {
  const text =
    '9:name=systemd:/user.slice\n8:pids:/km1s.service\n4:cpu,cpuacct:/\n0::/system.slice/km1s.service\n'
  it('finds the pids hierarchy on v1 and hybrid, the unified one on v2', () => {
    assert.equal(ownCgroup(text, 'hybrid'), '/km1s.service')
    assert.equal(ownCgroup(text, 'v1'), '/km1s.service')
    assert.equal(ownCgroup(text, 'v2'), '/system.slice/km1s.service')
  })
  it('says null when the hierarchy is not listed or the path climbs', () => {
    assert.equal(ownCgroup('0::/a\n', 'v1'), null)
    assert.equal(ownCgroup('8:pids:/a\n', 'v2'), null)
    assert.equal(ownCgroup('0::/../etc\n', 'v2'), null)
    assert.equal(ownCgroup('', 'hybrid'), null)
  })
})

describe('cgroups on a fake tree', () => {
  let root: string
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'km1s-test-cgroups-'))
  })
  after(async () => {
    await rm(root, { recursive: true, force: true })
  })

  it('v2: enables the controllers from the root down, sets the limits, warns once about a missing one', async () => {
    const v2 = join(root, 'v2')
    await mkdir(join(v2, 'km1s-x/c/p'), { recursive: true })
    await writeFile(join(v2, 'cgroup.controllers'), 'cpuset io memory hugetlb pids\n')
    await writeFile(join(v2, 'km1s-x/c/p/memory.swap.max'), 'max\n')
    const { log, lines } = captureLog()
    const cg = new Cgroups({ root: v2, log, mountsText: `cgroup2 ${v2} cgroup2 rw 0 0` })
    await cg.ensure('/km1s-x/c/p', { memoryBytes: 64 * MiB, cpuMillicores: 500, pids: 10 })
    await cg.ensure('/km1s-x/c/p', { memoryBytes: 32 * MiB, cpuMillicores: 500, pids: 12 })
    const read = (p: string) => readFile(join(v2, p), 'utf8')
    for (const dir of ['', 'km1s-x', 'km1s-x/c'])
      assert.equal(await read(join(dir, 'cgroup.subtree_control')), '+memory +pids', dir)
    await assert.rejects(read('km1s-x/c/p/cgroup.subtree_control'), { code: 'ENOENT' })
    assert.equal(await read('km1s-x/c/p/memory.max'), String(32 * MiB))
    assert.equal(await read('km1s-x/c/p/memory.swap.max'), '0')
    assert.equal(await read('km1s-x/c/p/pids.max'), '12')
    await assert.rejects(read('km1s-x/c/p/cpu.max'), { code: 'ENOENT' })
    const warned = warnings(lines)
    assert.equal(warned.length, 1)
    assert.match(warned[0] ?? '', /\bcpu\b/)
    assert.deepEqual(await cg.limitDirs('/km1s-x/c/p'), [join(v2, 'km1s-x/c/p')])

    await writeFile(join(v2, 'km1s-x/c/p/memory.events'), 'low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n')
    assert.equal(await cg.oomKills('/km1s-x/c/p'), 1)
    assert.equal(await cg.oomKills('/km1s-x/c/none'), 0)

    // A supervisors' cgroup: its parent hands no memory down, and no memory limit is written.
    await mkdir(join(v2, 'km1s-x/_shims/c'), { recursive: true })
    await cg.ensure('/km1s-x/_shims/c', { memoryBytes: 8 * MiB, pids: 8 }, { memory: false })
    assert.equal(await read('km1s-x/_shims/cgroup.subtree_control'), '+pids')
    await assert.rejects(read('km1s-x/_shims/c/memory.max'), { code: 'ENOENT' })
    assert.equal(await read('km1s-x/_shims/c/pids.max'), '8')
  })

  it('v2 without a memory controller refuses', async () => {
    const v2 = join(root, 'v2-nomem')
    await mkdir(v2, { recursive: true })
    await writeFile(join(v2, 'cgroup.controllers'), 'cpu pids\n')
    const cg = new Cgroups({
      root: v2,
      log: pino({ level: 'silent' }),
      mountsText: `cgroup2 ${v2} cgroup2 rw 0 0`,
    })
    await assert.rejects(cg.ensure('/km1s-x/c/p', { memoryBytes: 8 * MiB, pids: 1 }), {
      code: 'ERR_CGROUP_UNAVAILABLE',
    })
  })

  it('v1: writes memory, memsw when present, cpu and pids; warns about use_hierarchy 0', async () => {
    const v1 = join(root, 'v1')
    const mountsText = ['memory', 'cpu,cpuacct', 'pids', 'systemd']
      .map((h) => `cgroup ${join(v1, h)} cgroup rw,${h === 'systemd' ? 'name=systemd' : h} 0 0`)
      .join('\n')
    const mem = join(v1, 'memory/km1s-x/c/p')
    await mkdir(mem, { recursive: true })
    await writeFile(join(mem, 'memory.use_hierarchy'), '0\n')
    await writeFile(join(mem, 'memory.memsw.limit_in_bytes'), '9223372036854771712\n')
    const { log, lines } = captureLog()
    const cg = new Cgroups({ root: v1, log, mountsText })
    await cg.ensure('/km1s-x/c/p', { memoryBytes: 16 * MiB, cpuMillicores: 1500, pids: 64 })
    const read = (p: string) => readFile(join(v1, p), 'utf8')
    assert.equal(await read('memory/km1s-x/c/p/memory.limit_in_bytes'), String(16 * MiB))
    assert.equal(await read('memory/km1s-x/c/p/memory.memsw.limit_in_bytes'), String(16 * MiB))
    assert.equal(await read('cpu,cpuacct/km1s-x/c/p/cpu.cfs_period_us'), '100000')
    assert.equal(await read('cpu,cpuacct/km1s-x/c/p/cpu.cfs_quota_us'), '150000')
    assert.equal(await read('pids/km1s-x/c/p/pids.max'), '64')
    await assert.rejects(stat(join(v1, 'systemd/km1s-x')), { code: 'ENOENT' })
    assert.deepEqual(warnings(lines).length, 1)
    assert.match(warnings(lines)[0] ?? '', /use_hierarchy/)

    // A cgroup it makes afresh is not read: swap accounting was seen above, so memsw is written although
    // this fake directory has no such file yet (a kernel's new cgroup has it).
    await cg.ensure('/km1s-fresh/c/p', { memoryBytes: 8 * MiB, pids: 8 })
    assert.equal(await read('memory/km1s-fresh/c/p/memory.limit_in_bytes'), String(8 * MiB))
    assert.equal(await read('memory/km1s-fresh/c/p/memory.memsw.limit_in_bytes'), String(8 * MiB))
    assert.equal(await read('pids/km1s-fresh/c/p/pids.max'), '8')
    for (const h of ['memory', 'cpu,cpuacct', 'pids'])
      await rm(join(v1, h, 'km1s-fresh'), { recursive: true })

    // Supervisors stay out of the memory hierarchy: no directory there, and none to move into.
    await cg.ensure('/km1s-sup/_shims/c', { memoryBytes: 8 * MiB, pids: 8 }, { memory: false })
    await assert.rejects(stat(join(v1, 'memory/km1s-sup')), { code: 'ENOENT' })
    assert.equal(await read('pids/km1s-sup/_shims/c/pids.max'), '8')
    assert.deepEqual(await cg.limitDirs('/km1s-sup/_shims/c', { memory: false }), [
      join(v1, 'cpu,cpuacct/km1s-sup/_shims/c'),
      join(v1, 'pids/km1s-sup/_shims/c'),
    ])
    assert.equal((await cg.limitDirs('/km1s-sup/_shims/c')).length, 3)
    for (const h of ['cpu,cpuacct', 'pids']) await rm(join(v1, h, 'km1s-sup'), { recursive: true })

    // The count of a kill lives in the killed process's cgroup: the subtree is summed.
    await mkdir(join(mem, OCI_LEAF))
    await writeFile(join(mem, 'memory.oom_control'), 'oom_kill_disable 0\nunder_oom 0\noom_kill 0\n')
    await writeFile(
      join(mem, OCI_LEAF, 'memory.oom_control'),
      'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n',
    )
    assert.equal(await cg.oomKills('/km1s-x/c/p'), 2)

    // A leftover in one hierarchy only is found.
    await mkdir(join(v1, 'systemd/km1s-y/web/main', OCI_LEAF), { recursive: true })
    assert.deepEqual(await cg.list('km1s-y'), ['/km1s-y/web', '/km1s-y/web/main'])
    assert.deepEqual(await cg.list('km1s-x'), ['/km1s-x/c', '/km1s-x/c/p'])
    await assert.rejects(cg.list('../etc'), { code: 'ERR_INVALID_CGROUP_PATH' })
  })
})

// ---- On this host, as root: real cgroups under a unique prefix, removed in `after` whatever happens.

const PREFIX = `km1s-t${process.pid.toString(16).padStart(6, '0')}`

async function hostSkipReason(): Promise<string | false> {
  if (process.geteuid?.() !== 0) return 'needs root (real cgroups under /sys/fs/cgroup)'
  const h = new Cgroups({ log: pino({ level: 'silent' }) }).hierarchies()
  const { layout, v1, unified } = await h
  if (layout === 'none') return 'no cgroup filesystem under /sys/fs/cgroup'
  const limitRoot = layout === 'v2' ? unified : v1.get('memory')
  if (limitRoot === undefined || limitRoot === null) return 'no memory cgroup controller'
  try {
    await access(limitRoot, constants.W_OK)
  } catch {
    return `${limitRoot} is not writable`
  }
  return false
}
const skip = await hostSkipReason()

function exited(
  child: ChildProcess,
  timeoutMs: number,
): Promise<{ code: number | null; signal: string | null }> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode })
      return
    }
    const timer = setTimeout(
      () => reject(new Error(`pid ${child.pid} did not exit in ${timeoutMs} ms`)),
      timeoutMs,
    )
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal })
    })
  })
}

describe('warmMoves on a fake tree', () => {
  it("writes the agent's own pid into the cgroup it is in, once the hierarchies are known", async (t) => {
    const root = await mkdtemp(join(tmpdir(), 'km1s-test-warm-'))
    t.after(() => rm(root, { recursive: true, force: true }))
    const mountsText = ['memory', 'pids'].map((h) => `cgroup ${join(root, h)} cgroup rw,${h} 0 0`).join('\n')
    const own = ownCgroup(await readFile('/proc/self/cgroup', 'utf8'), 'v1')
    if (own === null) return t.skip('this host lists no v1 pids cgroup for this process')
    const procs = join(root, 'pids', own, 'cgroup.procs')
    await mkdir(join(root, 'pids', own), { recursive: true })
    await writeFile(procs, '')
    const cg = new Cgroups({ root, log: pino({ level: 'silent' }), mountsText })
    cg.warmMoves()
    await new Promise((r) => setTimeout(r, 50))
    assert.equal(await readFile(procs, 'utf8'), '', 'nothing before the hierarchies are read')
    await cg.hierarchies()
    cg.warmMoves()
    cg.warmMoves()
    for (let i = 0; i < 100 && (await readFile(procs, 'utf8')) === ''; i++)
      await new Promise((r) => setTimeout(r, 10))
    assert.equal(await readFile(procs, 'utf8'), String(process.pid))
  })
})

describe('cgroups on this host', { skip }, () => {
  const { log, lines } = captureLog()
  const cg = new Cgroups({ log })
  const children: ChildProcess[] = []
  const run = (file: string, args: string[]) => {
    const child = spawn(file, args, { stdio: ['pipe', 'ignore', 'ignore'] })
    children.push(child)
    return child
  }
  const read = (file: string) => readFile(file, 'utf8').then((s) => s.trim())
  /** Every directory of this test's prefix, in any hierarchy. */
  const ours = async () => {
    const { all } = await cg.hierarchies()
    return (
      await Promise.all(
        all.map((h) =>
          readdir(h).then(
            (names) => names.filter((n) => n === PREFIX).map((n) => join(h, n)),
            () => [],
          ),
        ),
      )
    ).flat()
  }
  // Processes written into cpuset need cpuset.cpus/mems first (crun copies them); the other hierarchies not.
  const enter = async (pid: number, path: string, hierarchies: string[]) => {
    for (const h of hierarchies) {
      await mkdir(join(h, path), { recursive: true })
      await writeFile(join(h, path, 'cgroup.procs'), String(pid))
    }
  }

  after(async () => {
    for (const child of children)
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null)
        child.kill('SIGKILL')
    const left = await cg.removeTree(`/${PREFIX}`)
    assert.deepEqual(left, [])
    assert.deepEqual(await ours(), [])
  })

  it('creates a cgroup with the limits, and updates them idempotently', async (t) => {
    const { layout, v1, unified } = await cg.hierarchies()
    const path = `/${PREFIX}/c1/p1`
    let started = performance.now()
    await cg.ensure(path, { memoryBytes: 64 * MiB, cpuMillicores: 250, pids: 32 })
    const firstMs = performance.now() - started
    started = performance.now()
    await cg.ensure(path, { memoryBytes: 64 * MiB, cpuMillicores: 250, pids: 32 })
    t.diagnostic(`ensure: new ${firstMs.toFixed(2)} ms, again ${(performance.now() - started).toFixed(2)} ms`)

    const check = async (memory: number, quota: string, pids: number) => {
      if (layout === 'v2') {
        const dir = join(unified as string, path)
        assert.equal(await read(join(dir, 'memory.max')), String(memory))
        assert.equal(await read(join(dir, 'cpu.max')), quota === '-1' ? 'max 100000' : `${quota} 100000`)
        assert.equal(await read(join(dir, 'pids.max')), String(pids))
        return
      }
      const mem = join(v1.get('memory') as string, path)
      assert.equal(await read(join(mem, 'memory.limit_in_bytes')), String(memory))
      if (await stat(join(mem, 'memory.memsw.limit_in_bytes')).catch(() => null))
        assert.equal(await read(join(mem, 'memory.memsw.limit_in_bytes')), String(memory))
      assert.equal(await read(join(mem, 'memory.use_hierarchy')), '1')
      const cpu = join(v1.get('cpu') as string, path)
      assert.equal(await read(join(cpu, 'cpu.cfs_period_us')), '100000')
      assert.equal(await read(join(cpu, 'cpu.cfs_quota_us')), quota)
      assert.equal(await read(join(v1.get('pids') as string, path, 'pids.max')), String(pids))
    }
    await check(64 * MiB, '25000', 32)
    // Raising (memsw must move first) and lowering (the memory limit must move first) both work.
    await cg.ensure(path, { memoryBytes: 256 * MiB, pids: 64 })
    await check(256 * MiB, '-1', 64)
    await cg.ensure(path, { memoryBytes: 16 * MiB, cpuMillicores: 1000, pids: 8 })
    await check(16 * MiB, '100000', 8)
    assert.deepEqual(await cg.usage(path), { memoryBytes: 0, pids: 0 })
    assert.equal(await cg.usage(`/${PREFIX}/c1/none`), null)
    assert.deepEqual(warnings(lines), [])
  })

  it('remove kills what runs in the subtree and removes it from every hierarchy', async (t) => {
    const { all, v1 } = await cg.hierarchies()
    const path = `/${PREFIX}/c2/p2`
    await cg.ensure(path, { memoryBytes: 32 * MiB, pids: 16 })
    const sleeper = run('sleep', ['30'])
    const pid = sleeper.pid as number
    // As an OCI runtime does: a leaf below km1s's cgroup in every hierarchy.
    const cpuset = v1.get('cpuset')
    await enter(
      pid,
      join(path, OCI_LEAF),
      all.filter((h) => h !== cpuset),
    )
    if (cpuset !== undefined) await mkdir(join(cpuset, path, OCI_LEAF), { recursive: true })
    assert.deepEqual(await cg.procs(path), [pid])
    assert.deepEqual(await cg.procs(`/${PREFIX}/c2`), [pid])
    const usage = await cg.usage(path)
    assert.equal(usage?.pids, 1)
    assert.ok((usage?.memoryBytes ?? 0) > 0)

    const started = performance.now()
    assert.deepEqual(await cg.remove(`/${PREFIX}/c2`), [])
    t.diagnostic(`remove with one process: ${(performance.now() - started).toFixed(1)} ms`)
    assert.deepEqual(await exited(sleeper, 2_000), { code: null, signal: 'SIGKILL' })
    for (const h of all) await assert.rejects(stat(join(h, PREFIX, 'c2')), { code: 'ENOENT' }, h)
    assert.deepEqual(await cg.remove(`/${PREFIX}/c2`), [], 'idempotent')
    assert.deepEqual(await cg.procs(`/${PREFIX}/c2`), [])
  })

  it('counts an OOM kill on the cgroup whose limit was hit', async (t) => {
    const { layout } = await cg.hierarchies()
    const parent = `/${PREFIX}/c3/p3`
    await cg.ensure(parent, { memoryBytes: 8 * MiB, pids: 16 })
    const limitDirs = await cg.limitDirs(parent)
    assert.equal(await cg.oomKills(parent), 0)

    // The process waits for a line on stdin, so that it is in the leaf before it allocates.
    const hog = async (leaf: string | null) => {
      const child = run('/bin/sh', ['-c', 'read _; x=a; while :; do x=$x$x; done'])
      const pid = child.pid as number
      for (const dir of limitDirs) {
        if (leaf !== null) await mkdir(join(dir, leaf), { recursive: true })
        await writeFile(join(dir, leaf ?? '', 'cgroup.procs'), String(pid))
      }
      child.stdin?.end('go\n')
      return exited(child, 10_000)
    }

    assert.deepEqual(await hog(OCI_LEAF), { code: null, signal: 'SIGKILL' })
    const kills = await cg.oomKills(parent)
    t.diagnostic(`layout ${layout}: oomKills(parent) = ${kills} with the process in ${parent}/${OCI_LEAF}`)
    assert.ok(kills >= 1, 'the OOM kill is counted')
    const peak = await cg.memoryPeak(parent)
    assert.ok(peak !== null && peak > 4 * MiB && peak <= 8 * MiB, `peak ${peak}`)

    for (const dir of limitDirs) await rmdir(join(dir, OCI_LEAF))
    const afterLeaf = await cg.oomKills(parent)
    if (layout === 'v2')
      assert.equal(afterLeaf, kills, 'v2 counts hierarchically: the count stays on the parent')
    else {
      // Measured on cgroup v1: the kernel counts an OOM kill only in the killed process's own memory
      // cgroup, not in the ancestor whose limit was hit. Once the runtime deletes its leaf the count is gone.
      t.diagnostic(`v1: after the leaf is removed oomKills(parent) = ${afterLeaf}`)
      assert.equal(afterLeaf, 0)
      const own = keyedValue(await read(join(limitDirs[0] as string, 'memory.oom_control')), 'oom_kill')
      assert.equal(own, 0)
    }

    // With the process in km1s's cgroup itself (no leaf) the count stays on every layout.
    assert.deepEqual(await hog(null), { code: null, signal: 'SIGKILL' })
    assert.equal(await cg.oomKills(parent), afterLeaf + 1)
    assert.deepEqual(await cg.remove(`/${PREFIX}/c3`), [])
  })

  it('list finds a leftover in a single hierarchy, and removeTree sweeps it', async () => {
    const { all } = await cg.hierarchies()
    const lone = all.at(-1) as string
    await mkdir(join(lone, PREFIX, 'c4/p4', OCI_LEAF), { recursive: true })
    const found = await cg.list(PREFIX)
    assert.ok(found.includes(`/${PREFIX}/c4`) && found.includes(`/${PREFIX}/c4/p4`), found.join(' '))
    assert.ok(!found.some((p) => p.endsWith(`/${OCI_LEAF}`)))
    assert.deepEqual(await cg.removeTree(`/${PREFIX}/c4`), [])
    assert.ok(!(await cg.list(PREFIX)).some((p) => p.startsWith(`/${PREFIX}/c4`)))
  })

  it('measures ensure and remove', async (t) => {
    const n = 20
    let ensureMs = 0
    let removeMs = 0
    for (let i = 0; i < n; i++) {
      const path = `/${PREFIX}/bench${i}/main`
      let started = performance.now()
      await cg.ensure(path, { memoryBytes: 64 * MiB, cpuMillicores: 500, pids: 64 })
      ensureMs += performance.now() - started
      started = performance.now()
      assert.deepEqual(await cg.remove(`/${PREFIX}/bench${i}`), [])
      removeMs += performance.now() - started
    }
    t.diagnostic(
      `mean of ${n}: ensure ${(ensureMs / n).toFixed(2)} ms, remove (empty) ${(removeMs / n).toFixed(2)} ms`,
    )
  })
})
