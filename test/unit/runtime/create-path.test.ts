// The pieces of the fast create path (docs/runtime.md, "The create path") that need no root: the pause
// process's stages and argv, the start gate of a process (an OCI hook: a shell reading the pause's FIFO), the gated shim,
// and the inotify wait for a pid file. Real shells run the scripts: their behaviour is the point.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import {
  closeSync,
  constants,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { hybridWrapper } from '../../../src/runtime/detect.ts'
import { ociConfig, withStartGate } from '../../../src/runtime/oci.ts'
import { pauseCommand, pauseEnv, pauseFailure, pauseStages } from '../../../src/runtime/pause.ts'
import { gateArgv, gatedCommand, shimArgv, waitForPidFile } from '../../../src/runtime/shim.ts'
import { until } from '../until.ts'

/**
 * Holds a FIFO open from now on, as the agent's log reader does, and checks later what was written to it.
 * Opened here before the shim runs: a FIFO that no process holds open drops what was written to it, and a
 * reader process started beside the shim sometimes opened it only after the shim had ended (a CI run).
 */
function fifoReader(path: string): { expect(text: string): void } {
  const fd = openSync(path, constants.O_RDWR | constants.O_NONBLOCK)
  return {
    expect: (text) => {
      const buf = Buffer.alloc(64 << 10)
      let n = 0
      try {
        n = readSync(fd, buf)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
      } finally {
        closeSync(fd)
      }
      assert.equal(buf.subarray(0, n).toString(), text)
    },
  }
}

const PATH = '/usr/local/bin:/usr/bin:/bin'
const dir = mkdtempSync(join(tmpdir(), 'km1s-createpath-'))
after(() => rmSync(dir, { recursive: true, force: true }))

function run(argv: string[], input?: string): { status: number | null; out: string } {
  const r = spawnSync(argv[0] as string, argv.slice(1), {
    input,
    encoding: 'utf8',
    env: { PATH },
    timeout: 10_000,
  })
  return { status: r.status, out: r.stdout }
}

describe('pause process', () => {
  it('reads its stages from its output, whole lines only', () => {
    assert.deepEqual(pauseStages(''), { ns: false, net: false })
    assert.deepEqual(pauseStages('n'), { ns: false, net: false })
    assert.deepEqual(pauseStages('ns\n'), { ns: true, net: false })
    assert.deepEqual(pauseStages('ns\nnet\n'), { ns: true, net: true })
    assert.deepEqual(pauseStages('nsx\nnetwork\n'), { ns: false, net: false })
    assert.deepEqual(pauseStages('ns 4242\nnet\n'), { ns: true, net: true, pid: 4242 })
    assert.deepEqual(pauseStages('ns 4242'), { ns: false, net: false })
    assert.deepEqual(pauseStages('ns x\nend 125\n'), { ns: false, net: false, end: 125 })
  })

  const NETWORK = {
    netns: 'km1s-a-b',
    hostNetnsPath: '/run/netns/h',
    containerFirst: [],
    host: ['x'],
    container: ['y'],
  }

  it('hands a shim the pause to fork, split at newlines', () => {
    const env = pauseEnv({
      dir: '/run/x',
      hostname: 'h',
      cgroupProcs: ['/a/cgroup.procs'],
      fifos: ['/f'],
      path: PATH,
      network: NETWORK,
    })
    assert.equal(env.KM1S_PAUSE_NS, '--net\n--uts\n--ipc')
    assert.equal(env.KM1S_PAUSE_ARGS, 'km1s-pause\n/run/x\nh\n1\n/a/cgroup.procs\n/f')
    assert.match(env.KM1S_PAUSE ?? '', /catatonit -P/)
    assert.equal(env.KM1S_NETNS, 'km1s-a-b')
    assert.equal(env.PATH, undefined)
    assert.throws(() => pauseEnv({ dir: '/run/x\ny', hostname: 'h', cgroupProcs: [], fifos: [], path: PATH }))
  })

  it('names the failed step from its exit status', () => {
    assert.match(pauseFailure(125, null), /cgroups/)
    assert.match(pauseFailure(123, null), /host side/)
    assert.match(pauseFailure(1, null), /status 1/)
    assert.match(pauseFailure(null, 'SIGKILL'), /SIGKILL/)
  })

  it('makes a network namespace only when it has a network to make', () => {
    const base = { dir: '/run/x', hostname: 'h', cgroupProcs: ['/a/cgroup.procs'], fifos: ['/f'], path: PATH }
    const plain = pauseCommand(base)
    assert.deepEqual(plain.argv.slice(0, 4), ['unshare', '--uts', '--ipc', '--'])
    assert.equal(plain.env.KM1S_NETNS, undefined)
    assert.deepEqual(plain.argv.slice(-6), ['km1s-pause', '/run/x', 'h', '1', '/a/cgroup.procs', '/f'])
    const net = pauseCommand({
      ...base,
      network: NETWORK,
    })
    assert.deepEqual(net.argv.slice(0, 5), ['unshare', '--net', '--uts', '--ipc', '--'])
    assert.equal(net.env.KM1S_NETNS, 'km1s-a-b')
    assert.equal(net.env.KM1S_HOST, 'x')
    assert.equal(net.argv.at(-1), '/f')
  })
})

describe('start gate (createRuntime hook)', () => {
  const config = ociConfig({
    container: 'c',
    process: 'p',
    args: ['/bin/true'],
    rootfs: '/r',
    hostname: 'c',
    files: { hosts: '/h', hostname: '/n', resolvConf: '/rc' },
    namespaces: { network: 'new', uts: 'new', ipc: 'new' },
  })

  it('adds one createRuntime hook and changes nothing else', () => {
    const gate = { held: '/proc/1/fd/6', fifo: '/d/net.gate', ready: '/d/net.ready' }
    const gated = withStartGate(config, gate)
    assert.deepEqual({ ...gated, hooks: undefined }, { ...config, hooks: undefined })
    assert.equal(gated.hooks?.createRuntime.length, 1)
    const hook = gated.hooks?.createRuntime[0]
    assert.equal(hook?.path, '/bin/sh')
    assert.deepEqual(hook?.args.slice(-3), ['/proc/1/fd/6', '/d/net.gate', '/d/net.ready'])
    assert.equal(config.hooks, undefined)
    assert.throws(() => withStartGate(config, { ...gate, fifo: 'net.gate' }), /absolute/)
  })

  const hookArgv = (held: string, fifo: string, ready: string) => {
    const hook = withStartGate(config, { held, fifo, ready }).hooks?.createRuntime[0]
    return [hook?.path as string, ...(hook?.args.slice(1) ?? [])]
  }

  it('passes at once when the network is there', () => {
    const ready = join(dir, 'ready-1')
    writeFileSync(ready, '')
    assert.equal(run(hookArgv('/proc/1/fd/99', join(dir, 'absent-fifo'), ready)).status, 0)
  })

  it('reads the state the runtime writes on its stdin to the end: exiting first would kill crun (SIGPIPE)', () => {
    const ready = join(dir, 'ready-state')
    writeFileSync(ready, '')
    const argv = hookArgv('/proc/1/fd/99', join(dir, 'absent-fifo'), ready)
    const r = spawnSync(argv[0] as string, argv.slice(1), {
      input: `{"ociVersion":"1.0.2","pad":"${'x'.repeat(256 * 1024)}"}`,
      env: { PATH },
      timeout: 10_000,
    })
    assert.equal(r.error, undefined)
    assert.equal(r.status, 0)
  })

  // The pause's part: the FIFO held open read-write on fd 6 until told to finish, then the ready file (or
  // not), as pause.ts does.
  const holder = (fifo: string, ready: string, makeReady: boolean, stdin: 'pipe' | 'ignore') =>
    spawn(
      '/bin/sh',
      [
        '-c',
        `exec 6<>"$1"; echo held; read -r x; ${makeReady ? ': > "$2";' : ''} exec 6>&-; exec sleep 5`,
        'holder',
        fifo,
        ready,
      ],
      { env: { PATH }, stdio: [stdin, 'pipe', 'ignore'] },
    )

  it('waits while the pause holds the gate, passes once it made the network, fails when it gave up', async () => {
    const fifo = join(dir, 'gate-2')
    const ready = join(dir, 'ready-2')
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0)
    for (const makeReady of [true, false]) {
      rmSync(ready, { force: true })
      const pause = holder(fifo, ready, makeReady, 'pipe')
      await new Promise((resolve) => pause.stdout?.once('data', resolve))
      const argv = hookArgv(`/proc/${pause.pid}/fd/6`, fifo, ready)
      const gate = spawn(argv[0] as string, argv.slice(1), { env: { PATH }, stdio: 'ignore' })
      const status = new Promise<number | null>((resolve) => gate.once('exit', resolve))
      const early = await Promise.race([status, new Promise((r) => setTimeout(() => r('waiting'), 200))])
      assert.equal(early, 'waiting')
      pause.stdin?.end('go\n')
      assert.equal(await status, makeReady ? 0 : 1)
      pause.kill('SIGKILL')
    }
  })

  it('does not wait for a pause that died holding the gate, nor for one that closed it', async () => {
    const fifo = join(dir, 'gate-3')
    const ready = join(dir, 'ready-3')
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0)
    const pause = holder(fifo, ready, false, 'pipe')
    await new Promise((resolve) => pause.stdout?.once('data', resolve))
    const held = `/proc/${pause.pid}/fd/6`
    pause.kill('SIGKILL')
    await new Promise((resolve) => pause.once('exit', resolve))
    assert.equal(run(hookArgv(held, fifo, ready)).status, 1)
    // Closed after the network was made: the fd is gone, the ready file is there.
    const done = holder(fifo, ready, true, 'pipe')
    await new Promise((resolve) => done.stdout?.once('data', resolve))
    done.stdin?.end('go\n')
    await until('the ready file', () => existsSync(ready), 2_000)
    assert.equal(run(hookArgv(`/proc/${done.pid}/fd/6`, fifo, ready)).status, 0)
    done.kill('SIGKILL')
  })
})

describe('gated shim', () => {
  const shim = (name: string, gated: boolean, command: string[]) => {
    const d = join(dir, name)
    spawnSync('mkdir', ['-p', d])
    spawnSync('mkfifo', [join(d, 'stdout'), join(d, 'stderr')])
    const argv = shimArgv({
      dir: d,
      cgroupProcs: [],
      argv: gated ? [...gateArgv(d, [join(d, 'procs-a'), join(d, 'procs-b')]), ...command] : command,
      env: { PATH },
      cwd: '/',
      gated,
    })
    return { d, argv }
  }

  it('runs the command after go, with its output on the FIFOs, and records its status', () => {
    const { d, argv } = shim('go', true, ['/bin/sh', '-c', 'echo hello; exit 3'])
    // Read the FIFO while the shim runs: a reader of our own keeps the output.
    const reader = fifoReader(join(d, 'stdout'))
    const r = run(argv, 'cg\ngo\n')
    assert.equal(r.status, 0)
    // It moved the shim, then itself, into each "cgroup" (plain files here): two pids, the shim's first.
    const shimPid = readFileSync(join(d, 'shim.pid'), 'utf8').trim()
    for (const f of ['procs-a', 'procs-b']) assert.equal(readFileSync(join(d, f), 'utf8').trim() !== '', true)
    assert.equal(
      readFileSync(join(d, 'procs-a'), 'utf8').trim(),
      readFileSync(join(d, 'procs-b'), 'utf8').trim(),
    )
    assert.notEqual(shimPid, '')
    assert.equal(readFileSync(join(d, 'exit'), 'utf8').trim(), '3')
    assert.ok(existsSync(join(d, 'shim.pid')))
    reader.expect('hello\n')
  })

  it('holds the gate itself (inline): moves itself, runs the command after go, nothing without it', () => {
    const d = join(dir, 'inline')
    spawnSync('mkdir', ['-p', d])
    spawnSync('mkfifo', [join(d, 'stdout'), join(d, 'stderr')])
    const argvOf = (marker: string) =>
      shimArgv({
        dir: d,
        cgroupProcs: [join(d, 'procs-a'), join(d, 'procs-b')],
        argv: ['/bin/sh', '-c', `: > "${marker}"; echo hello; exit 4`],
        env: { PATH },
        cwd: '/',
        gated: true,
        inline: true,
      })
    const reader = fifoReader(join(d, 'stdout'))
    for (const input of ['cg\nno\n', 'cg\n', '', 'go\n']) {
      const marker = join(dir, 'inline-not-run')
      assert.equal(run(argvOf(marker), input).status, 0)
      assert.equal(existsSync(marker), false, JSON.stringify(input))
      assert.equal(existsSync(join(d, 'exit')), false)
    }
    const marker = join(dir, 'inline-ran')
    assert.equal(run(argvOf(marker), 'cg\ngo\n').status, 0)
    assert.ok(existsSync(marker))
    const shimPid = readFileSync(join(d, 'shim.pid'), 'utf8').trim()
    for (const f of ['procs-a', 'procs-b']) assert.equal(readFileSync(join(d, f), 'utf8').trim(), shimPid)
    assert.equal(readFileSync(join(d, 'exit'), 'utf8').trim(), '4')
    reader.expect('hello\n')
  })

  it('runs nothing and records no status without go: a later agent sees a start cut short', () => {
    for (const [name, input] of [
      ['no', 'cg\nno\n'],
      ['eof', 'cg\n'],
      ['nothing', ''],
      ['go-unmoved', 'go\n'],
    ] as const) {
      const marker = join(dir, `${name}-ran`)
      const { d, argv } = shim(name, true, ['/bin/sh', '-c', `: > "${marker}"`])
      assert.equal(run(argv, input).status, 0)
      assert.equal(existsSync(marker), false)
      assert.equal(existsSync(join(d, 'exit')), false)
    }
  })

  it("runs the gate in the hybrid wrapper's own shell: one exec fewer", () => {
    const run = ['/usr/bin/crun', 'run', 'x']
    const plain = gatedCommand([], '/d', ['/c'], run)
    assert.deepEqual(plain, [...gateArgv('/d', ['/c']), ...run])
    const merged = gatedCommand(
      hybridWrapper('/usr/bin/unshare', '/sys/fs/cgroup/unified'),
      '/d',
      ['/c'],
      run,
    )
    assert.equal(merged.filter((a) => a === '/bin/sh').length, 1)
    assert.deepEqual(merged.slice(0, 6), [
      '/usr/bin/unshare',
      '-m',
      '--propagation',
      'private',
      '/bin/sh',
      '-c',
    ])
    assert.deepEqual(merged.slice(7), ['/sys/fs/cgroup/unified', '/d', '/c', ...run])
    // The merged shell, run without its unshare and with an umount that only says what it was given.
    const bin = join(dir, 'fake-bin')
    spawnSync('mkdir', ['-p', bin])
    writeFileSync(join(bin, 'umount'), `#!/bin/sh\necho "$1" > ${join(dir, 'umounted')}\n`, { mode: 0o755 })
    const { d, argv } = shim('merged', true, [])
    const shimPart = argv.slice(0, argv.indexOf('gated') + 1)
    const cmd = gatedCommand(
      hybridWrapper('/usr/bin/unshare', '/sys/fs/cgroup/unified'),
      d,
      [join(d, 'procs')],
      ['/bin/sh', '-c', 'echo ran'],
    ).slice(4)
    const r = spawnSync(shimPart[0] as string, [...shimPart.slice(1), ...cmd], {
      input: 'cg\ngo\n',
      env: { PATH: `${bin}:${PATH}` },
      timeout: 10_000,
    })
    assert.equal(r.status, 0)
    assert.equal(readFileSync(join(dir, 'umounted'), 'utf8').trim(), '/sys/fs/cgroup/unified')
    assert.equal(readFileSync(join(d, 'exit'), 'utf8').trim(), '0')
    assert.notEqual(readFileSync(join(d, 'procs'), 'utf8').trim(), '')
  })

  it('ungated, runs at once as before', () => {
    const { d, argv } = shim('plain', false, ['/bin/sh', '-c', 'exit 4'])
    run(argv)
    assert.equal(readFileSync(join(d, 'exit'), 'utf8').trim(), '4')
  })
})

describe('waitForPidFile', () => {
  it('answers when the file is written, without waiting for the poll', async () => {
    const file = join(dir, 'pid-1')
    const t = performance.now()
    const waiting = waitForPidFile(file, new Promise(() => {}), 5_000, 10_000)
    setTimeout(() => void writeFile(file, '4242\n'), 20)
    assert.equal(await waiting, 4242)
    assert.ok(performance.now() - t < 2_000)
  })

  it('is null when the shim ends first or the time is up, and ignores a half-written file', async () => {
    const file = join(dir, 'pid-2')
    writeFileSync(file, '')
    assert.equal(await waitForPidFile(file, Promise.resolve(), 5_000), null)
    assert.equal(await waitForPidFile(file, new Promise(() => {}), 100, 20), null)
  })
})
