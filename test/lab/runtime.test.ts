// The runtime compliance suite: one set of behaviours, run against both runtimes (`process` and `oci`),
// through the runtime's own interface. Then, for `oci` only and as root, the isolation and limits.
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createLogger } from '../../src/common/logger.ts'
import { startExec } from '../../src/runtime/exec.ts'
import type { ContainerSpecInput, ContainerStatus, LogEntry, Runtime } from '../../src/runtime/types.ts'
import {
  census,
  isRoot,
  memoryCgroupCount,
  type RuntimeHarness,
  runtimeHarness,
  sleep,
  until,
} from './runtime-fixture.ts'

const NODE_DIR = resolve(import.meta.dirname, '../../node_modules/node/bin')
const silent = createLogger({ level: 'silent' })

async function collect(iter: AsyncIterable<LogEntry>): Promise<LogEntry[]> {
  const out: LogEntry[] = []
  for await (const e of iter) out.push(e)
  return out
}

async function logText(rt: Runtime, name: string, process?: string): Promise<string> {
  return (await collect(rt.logs(name, { process }))).map((e) => e.line).join('\n')
}

function proc(rt: Runtime, name: string, process = 'main') {
  return rt.get(name)?.processes.find((p) => p.name === process)
}

async function waitState(rt: Runtime, name: string, pred: (s: ContainerStatus) => boolean, what: string) {
  return until(what, () => {
    const s = rt.get(name)
    return s && pred(s) ? s : undefined
  })
}

function one(name: string, args: string[], extra: Partial<ContainerSpecInput['processes'][number]> = {}) {
  return { name, processes: [{ name: 'main', args, ...extra }] } satisfies ContainerSpecInput
}

async function exec(rt: Runtime, container: string, args: string[], tty = false) {
  const prepared = await rt.prepareExec({ container, args, tty })
  const session = startExec(prepared, { tty, cols: 100, rows: 30, log: silent })
  let out = ''
  session.stdout.on('data', (d: Buffer) => {
    out += d.toString()
  })
  session.stderr?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  session.stdin.end()
  const result = await session.exited
  return { ...result, out }
}

for (const kind of ['process', 'oci'] as const) {
  const skip = kind === 'oci' && !isRoot ? 'the oci runtime needs root' : false
  describe(`runtime compliance: ${kind}`, { skip }, () => {
    let h: RuntimeHarness
    let rt: Runtime
    before(async () => {
      h = await runtimeHarness(kind)
      rt = h.runtime
    })
    after(async () => {
      await h?.destroy()
      if (h) {
        const left = census(h.instance, h.dir, h.hostNetns)
        assert.deepEqual(Object.values(left).flat(), [], `leftovers after the suite: ${JSON.stringify(left)}`)
      }
    })

    it('runs a container with several processes, their output in the logs', async () => {
      const s = await rt.create({
        name: 'multi',
        processes: [
          { name: 'a', args: ['/bin/sh', '-c', 'echo from-a; exec sleep 60'] },
          { name: 'b', args: ['/bin/sh', '-c', 'echo from-b >&2; exec sleep 60'] },
        ],
      })
      assert.equal(s.name, 'multi')
      await waitState(rt, 'multi', (c) => c.state === 'running', 'multi running')
      const st = rt.get('multi')
      assert.ok(st?.processes.every((p) => p.pid !== null && p.pid > 1))
      // Both started at once and neither failed on the way (two cruns once raced over a shared root).
      assert.ok(
        st?.processes.every((p) => p.restarts === 0 && p.lastExit === null),
        JSON.stringify(st),
      )
      if (kind === 'oci') assert.match(st?.ip ?? '', /^10\.42\.0\.\d+$/)
      await until('both lines logged', async () => {
        const text = await logText(rt, 'multi')
        return text.includes('from-a') && text.includes('from-b')
      })
      const onlyB = await collect(rt.logs('multi', { process: 'b' }))
      assert.ok(onlyB.length > 0 && onlyB.every((e) => e.process === 'b'))
      assert.ok(onlyB.some((e) => e.stream === 'stderr' && e.line === 'from-b'))
      await assert.rejects(
        () => rt.create({ name: 'multi', processes: [{ name: 'x', args: ['/bin/true'] }] }),
        {
          code: 'ERR_EXISTS',
        },
      )
    })

    it('restart always: a process that ends is started again, with a growing back-off', async () => {
      await rt.create(one('always', ['/bin/sh', '-c', 'echo run; exit 0'], { restart: 'always' }))
      const p = await until('two restarts', () => {
        const x = proc(rt, 'always')
        return x && x.restarts >= 2 ? x : undefined
      })
      assert.equal(p.lastExit?.reason, 'exited')
      assert.equal(p.lastExit?.code, 0)
      await rt.remove('always')
    })

    it('on-failure restarts a failure and not a success; never leaves it exited with its code', async () => {
      await rt.create(one('ok', ['/bin/sh', '-c', 'exit 0'], { restart: 'on-failure' }))
      await rt.create(one('fail', ['/bin/sh', '-c', 'exit 3'], { restart: 'on-failure' }))
      await rt.create(one('never', ['/bin/sh', '-c', 'exit 4'], { restart: 'never' }))
      await until('ok exited', () => proc(rt, 'ok')?.state === 'exited')
      await until('fail restarted', () => (proc(rt, 'fail')?.restarts ?? 0) >= 1)
      await until('never exited', () => proc(rt, 'never')?.state === 'exited')
      await sleep(500)
      assert.equal(proc(rt, 'ok')?.restarts, 0)
      assert.equal(proc(rt, 'never')?.restarts, 0)
      assert.equal(proc(rt, 'never')?.lastExit?.code, 4)
      assert.equal(proc(rt, 'never')?.lastExit?.message, 'exited with code 4')
      assert.equal(proc(rt, 'fail')?.lastExit?.code, 3)
      assert.match(await logText(rt, 'never'), /km1s: main exited with code 4/)
      for (const n of ['ok', 'fail', 'never']) await rt.remove(n)
    })

    it('says why a program cannot run: missing, not executable, another CPU or not a program', async () => {
      const bin = join(h.dir, 'bin')
      await mkdir(bin, { recursive: true })
      await chmod(h.dir, 0o755)
      await writeFile(join(bin, 'noexec'), '#!/bin/sh\necho hi\n', { mode: 0o644 })
      const arm = Buffer.alloc(64)
      Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(arm)
      arm.writeUInt16LE(process.arch === 'arm64' ? 62 : 183, 18)
      await writeFile(join(bin, 'otherarch'), arm, { mode: 0o755 })
      await writeFile(join(bin, 'garbage'), Buffer.from('just some bytes\n'), { mode: 0o755 })
      const at = (f: string) => (kind === 'oci' ? `/app/${f}` : join(bin, f))
      const cases = [
        ['missing', at('nope'), 'not-found'],
        ['noexec', at('noexec'), 'not-executable'],
        ['otherarch', at('otherarch'), 'exec-format'],
        ['garbage', at('garbage'), 'exec-format'],
      ] as const
      for (const [name, path] of cases) {
        await rt.create({
          name,
          artifactDir: bin,
          processes: [{ name: 'main', args: [path], restart: 'never' }],
        })
      }
      for (const [name, , reason] of cases) {
        const p = await until(`${name} exited`, () => {
          const x = proc(rt, name)
          return x?.state === 'exited' ? x : undefined
        })
        assert.equal(p.lastExit?.reason, reason, `${name}: ${p.lastExit?.message}`)
        assert.ok((p.lastExit?.message.length ?? 0) > 10)
        assert.match(await logText(rt, name), /km1s: cannot start main/)
        await rt.remove(name)
      }
      assert.ok(rt.list().every((c) => !cases.some(([n]) => n === c.name)))
    })

    it('a process killed by a signal says which', async () => {
      await rt.create(one('killed', ['/bin/sh', '-c', 'kill -KILL $$'], { restart: 'never' }))
      const p = await until('killed exited', () => {
        const x = proc(rt, 'killed')
        return x?.state === 'exited' ? x : undefined
      })
      assert.equal(p.lastExit?.reason, 'signal')
      assert.equal(p.lastExit?.signal, 'SIGKILL')
      await rt.remove('killed')
    })

    it('stop is TERM, then KILL after the grace period for a process that ignores TERM', async () => {
      await rt.create(one('polite', ['/bin/sh', '-c', 'trap "exit 0" TERM; while :; do sleep 0.1; done']))
      await rt.create(
        one('stubborn', ['/bin/sh', '-c', 'trap "" TERM; while :; do sleep 0.1; done'], { stopGraceMs: 700 }),
      )
      await waitState(rt, 'polite', (c) => c.state === 'running', 'polite running')
      await waitState(rt, 'stubborn', (c) => c.state === 'running', 'stubborn running')
      let t = performance.now()
      await rt.remove('polite')
      const politeMs = performance.now() - t
      t = performance.now()
      await rt.remove('stubborn')
      const stubbornMs = performance.now() - t
      assert.ok(politeMs < 650, `polite took ${politeMs} ms`)
      assert.ok(stubbornMs >= 650 && stubbornMs < 4_000, `stubborn took ${stubbornMs} ms`)
      assert.equal(rt.get('polite'), undefined)
      // Removed the moment it exists: PID 1 drops a TERM that comes before its handlers, so it is repeated.
      for (let i = 0; i < 5; i++) {
        await rt.create(one(`hasty${i}`, ['/bin/sleep', '60']))
        t = performance.now()
        await rt.remove(`hasty${i}`)
        const ms = performance.now() - t
        assert.ok(ms < 2_000, `a stop right after the start took ${Math.round(ms)} ms (grace 5 s)`)
      }
    })

    it('logs: since, tail, and follow until aborted', async () => {
      await rt.create(
        one('talker', ['/bin/sh', '-c', 'i=0; while :; do i=$((i+1)); echo line $i; sleep 0.05; done']),
      )
      await until('some lines', async () => (await collect(rt.logs('talker', {}))).length >= 5)
      const tail = await collect(rt.logs('talker', { tail: 2 }))
      assert.equal(tail.length, 2)
      const future = await collect(rt.logs('talker', { sinceMs: Date.now() + 60_000 }))
      assert.equal(future.length, 0)
      const ac = new AbortController()
      const seen: LogEntry[] = []
      const started = Date.now()
      const follow = (async () => {
        for await (const e of rt.logs('talker', { follow: true, sinceMs: started, signal: ac.signal })) {
          seen.push(e)
          if (seen.length >= 5) ac.abort()
        }
      })()
      await follow
      assert.ok(seen.length >= 5)
      assert.ok(seen.every((e) => Date.parse(e.time) >= started - 1))
      // A follower without a signal of its own ends when its container is removed.
      const orphan = collect(rt.logs('talker', { follow: true }))
      await rt.remove('talker')
      const t0 = performance.now()
      await orphan
      assert.ok(performance.now() - t0 < 1_000)
    })

    it('exec runs a command in the container and returns its status, with a terminal when asked', async () => {
      await rt.create(one('shell', ['/bin/sh', '-c', 'echo hi > /tmp/marker; exec sleep 60']))
      await waitState(rt, 'shell', (c) => c.state === 'running', 'shell running')
      const r = await exec(rt, 'shell', ['/bin/sh', '-c', 'echo out; echo err >&2; exit 7'])
      assert.equal(r.code, 7)
      assert.match(r.out, /out/)
      assert.match(r.out, /err/)
      const tty = await exec(
        rt,
        'shell',
        ['/bin/sh', '-c', 'test -t 0 && echo is-a-tty; stty size; exit 3'],
        true,
      )
      assert.equal(tty.code, 3)
      assert.match(tty.out, /is-a-tty/)
      assert.match(tty.out, /30 100/)
      if (kind === 'oci') {
        const sees = await exec(rt, 'shell', ['/bin/cat', '/tmp/marker'])
        assert.equal(sees.out.trim(), 'hi', 'exec shares the process mount namespace')
        const who = await exec(rt, 'shell', ['/usr/bin/id', '-u'])
        assert.equal(who.out.trim(), '65534', 'exec runs as the process user')
      }
      await assert.rejects(() => rt.prepareExec({ container: 'nope', args: ['/bin/true'], tty: false }), {
        code: 'ERR_NOT_FOUND',
      })
      await rt.remove('shell')
    })

    it('containers outlive the runtime: a restart adopts the running and records what ended meanwhile', async () => {
      await rt.create(one('lasting', ['/bin/sh', '-c', 'exec sleep 600']))
      await rt.create(one('brief', ['/bin/sh', '-c', 'sleep 1; exit 5'], { restart: 'never' }))
      const before = await waitState(rt, 'lasting', (c) => c.state === 'running', 'lasting running')
      await waitState(rt, 'brief', (c) => c.state === 'running', 'brief running')
      await h.runtime.stop()
      await sleep(1500) // brief ends while nobody watches
      rt = await h.restart()
      const adopted = rt.get('lasting')
      assert.equal(adopted?.state, 'running')
      assert.equal(adopted?.processes[0]?.pid, before.processes[0]?.pid, 'the same process, not a new one')
      const brief = await until('brief exited', () => {
        const x = proc(rt, 'brief')
        return x?.state === 'exited' ? x : undefined
      })
      assert.equal(brief.lastExit?.code, 5)
      // And the adopted one is still supervised: killing it is noticed and it restarts.
      process.kill(before.processes[0]?.pid as number, 'SIGKILL')
      await until('lasting restarted', () => (proc(rt, 'lasting')?.restarts ?? 0) >= 1)
      await rt.remove('lasting')
      await rt.remove('brief')
    })

    it('refuses a bad spec with one sentence and changes nothing', async () => {
      const n = rt.list().length
      await assert.rejects(
        () => rt.create({ name: 'Bad Name', processes: [{ name: 'm', args: ['/bin/true'] }] }),
        {
          code: 'ERR_INVALID',
          message: /^Invalid container spec: name: .*\.$/,
        },
      )
      await assert.rejects(() => rt.create({ name: 'empty', processes: [] }), { code: 'ERR_INVALID' })
      await assert.rejects(() => rt.remove('nothing-here'), { code: 'ERR_NOT_FOUND' })
      assert.equal(rt.list().length, n)
      // A disk that refuses the record: the create fails with one sentence and leaves nothing running.
      const specDir = h.names.specDir
      await rename(specDir, `${specDir}.away`)
      await writeFile(specDir, 'not a directory')
      try {
        await assert.rejects(() => rt.create(one('undiskable', ['/bin/sleep', '60'])), {
          code: 'ERR_DISK',
          message: /^Cannot record container undiskable on disk .*; nothing was started\.$/,
        })
      } finally {
        await rm(specDir)
        await rename(`${specDir}.away`, specDir)
      }
      assert.equal(rt.get('undiskable'), undefined)
      assert.equal(rt.list().length, n)
    })
  })
}

describe('runtime oci: isolation and limits', { skip: isRoot ? false : 'needs root' }, () => {
  let h: RuntimeHarness
  let rt: Runtime
  before(async () => {
    h = await runtimeHarness('oci')
    rt = h.runtime
  })
  after(async () => {
    await h?.destroy()
    if (h) assert.deepEqual(Object.values(census(h.instance, h.dir, h.hostNetns)).flat(), [])
  })

  it('kills a process that allocates past its memory limit and says OOM', async () => {
    await rt.create(
      one('hog', ['/bin/sh', '-c', 'x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done'], {
        restart: 'never',
        limits: { memoryBytes: 8 * 1024 * 1024, pids: 16 },
      }),
    )
    const p = await until('hog ended', () => {
      const x = proc(rt, 'hog')
      return x?.state === 'exited' ? x : undefined
    })
    assert.equal(p.lastExit?.reason, 'oom-killed', p.lastExit?.message)
    assert.match(p.lastExit?.message ?? '', /out of memory \(limit 8 MiB\)/)
    assert.match(await logText(rt, 'hog'), /out of memory/)
    await rt.remove('hog')
  })

  it('repairs its way past a leftover namespace file when the fast network path fails', async () => {
    // A crash can leave /run/netns/<name> as a plain file: the pause process's `ip netns attach` refuses
    // it, and attachContainer (which replaces such files) finishes the job.
    await writeFile(`/run/netns/km1s-${h.instance}-stale`, '')
    const s = await rt.create(one('stale', ['/bin/sh', '-c', 'exec sleep 600']))
    assert.equal(s.state, 'running', JSON.stringify(s))
    const r = await exec(rt, 'stale', ['/bin/sh', '-c', 'cat /sys/class/net/eth0/operstate'])
    assert.equal(r.out.trim(), 'up')
    await rt.remove('stale')
  })

  it('starts the program only once its network is made, in the hostname of its pause', async () => {
    // The process is started while the pause process still makes the network: its start gate must hold it
    // until eth0 is up with the address and the default route (docs/runtime.md, "The create path").
    const first = [
      'cat /sys/class/net/eth0/operstate',
      'grep -c "^eth0[[:space:]]00000000" /proc/net/route',
      // Any address of the container subnet: which one is known only once the create returns.
      "grep -c '10[.]42[.]' /proc/net/fib_trie",
      'cat /proc/sys/kernel/hostname',
      'exec sleep 600',
    ].join('; ')
    const names = ['gate-a', 'gate-b', 'gate-c']
    const made = await Promise.all(names.map((n) => rt.create(one(n, ['/bin/sh', '-c', first]))))
    for (const [i, n] of names.entries()) {
      const s = made[i] as ContainerStatus
      assert.equal(s.state, 'running', JSON.stringify(s))
      const text = await until(`${n} wrote its first lines`, async () => {
        const t = await logText(rt, n)
        return t.split('\n').length >= 4 ? t : undefined
      })
      const [operstate, route, addresses, hostname] = text.split('\n')
      assert.equal(operstate, 'up', text)
      assert.equal(route, '1', text)
      assert.notEqual(addresses, '0', text)
      assert.equal(hostname, n, text)
      const addr = await exec(rt, n, ['/bin/sh', '-c', `grep -c '${s.ip}' /proc/net/fib_trie`])
      assert.notEqual(addr.out.trim(), '0', addr.out)
    }
    for (const n of names) await rt.remove(n)
  })

  it('holds the pids limit', async () => {
    await rt.create(
      one('forky', ['/bin/sh', '-c', 'for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; wait'], {
        limits: { memoryBytes: 32 * 1024 * 1024, pids: 5 },
      }),
    )
    await until('fork refused', async () =>
      /fork|Resource temporarily unavailable/i.test(await logText(rt, 'forky')),
    )
    const pids = readFileSync(
      `/sys/fs/cgroup/pids${h.names.processCgroup('forky', 'main')}/pids.current`,
      'utf8',
    )
    assert.ok(Number(pids) <= 5, `pids.current ${pids}`)
    await rt.remove('forky')
  })

  it('holds the CPU quota', async () => {
    await rt.create(
      one('spin', ['/bin/sh', '-c', 'while :; do :; done'], {
        limits: { memoryBytes: 16 * 1024 * 1024, pids: 8, cpuMillicores: 100 },
      }),
    )
    await waitState(rt, 'spin', (c) => c.state === 'running', 'spin running')
    const path = h.names.processCgroup('spin', 'main')
    // Nanoseconds of CPU: cgroup v1 cpuacct (its own mount here, `cpu,cpuacct` elsewhere), or v2 cpu.stat.
    const usage = (): number => {
      for (const dir of ['cpuacct', 'cpu,cpuacct']) {
        for (const sub of ['', '/oci']) {
          const file = `/sys/fs/cgroup/${dir}${path}${sub}/cpuacct.usage`
          if (existsSync(file)) return Number(readFileSync(file, 'utf8'))
        }
      }
      const stat = readFileSync(`/sys/fs/cgroup${path}/cpu.stat`, 'utf8')
      return Number(/usage_usec (\d+)/.exec(stat)?.[1]) * 1000
    }
    const u0 = usage()
    const t0 = performance.now()
    await sleep(1000)
    const cpu = (usage() - u0) / 1e6 / (performance.now() - t0)
    assert.ok(cpu < 0.2, `used ${cpu.toFixed(2)} CPUs with a quota of 0.1`)
    await rt.remove('spin')
  })

  it('sees no host processes, no other container, cannot write /usr; two containers reach each other', async () => {
    await rt.create({
      name: 'server',
      artifactDir: NODE_DIR,
      processes: [
        {
          name: 'main',
          args: [
            '/app/node',
            '-e',
            "require('node:fs').writeFileSync('/tmp/secret','s');require('node:http').createServer((q,s)=>s.end('pong')).listen(8080)",
          ],
          limits: { memoryBytes: 256 * 1024 * 1024, pids: 64 },
        },
      ],
    })
    await rt.create(one('client', ['/bin/sh', '-c', 'exec sleep 600']))
    const server = await waitState(rt, 'server', (c) => c.state === 'running', 'server running')
    await waitState(rt, 'client', (c) => c.state === 'running', 'client running')
    const procs = await exec(rt, 'client', ['/bin/sh', '-c', 'ls /proc | grep -c "^[0-9]"'])
    assert.ok(Number(procs.out.trim()) <= 5, `the client sees ${procs.out.trim()} processes`)
    const secret = await exec(rt, 'client', ['/bin/sh', '-c', 'ls /tmp/secret'])
    assert.notEqual(secret.code, 0, 'the client must not see the server /tmp')
    const usr = await exec(rt, 'client', ['/bin/sh', '-c', 'touch /usr/km1s-test'])
    assert.notEqual(usr.code, 0)
    assert.match(usr.out, /Read-only file system|Permission denied/)
    const reach = await until('the client reaches the server', async () => {
      const r = await exec(rt, 'client', [
        '/bin/bash',
        '-c',
        `exec 3<>/dev/tcp/${server.ip}/8080 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3`,
      ])
      return r.out.includes('pong') ? r : undefined
    })
    assert.match(reach.out, /pong/)
    await rt.remove('server')
    await rt.remove('client')
  })

  it('leaves no dying memory cgroups: containers made and removed cost the kernel nothing after', async (t) => {
    const before = memoryCgroupCount()
    if (before === null) return t.skip('no v1 memory hierarchy here')
    for (let i = 0; i < 10; i++) {
      await rt.create(one(`memcg${i}`, ['/bin/sh', '-c', 'exec sleep 600']))
      await rt.remove(`memcg${i}`)
    }
    // Measured before the fix: ~2.5 per container (the supervisors' and the process's memory cgroups).
    const after = await until(
      'the memory cgroups released',
      () => {
        const n = memoryCgroupCount()
        return n !== null && n - before <= 2 ? n : undefined
      },
      3_000,
    ).catch(() => memoryCgroupCount())
    assert.ok(
      after !== null && after - before <= 2,
      `${(after ?? 0) - before} more memory cgroups after 10 containers`,
    )
  })
})
