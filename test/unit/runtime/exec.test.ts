import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { pino } from 'pino'
import { type ExecProcess, shQuote, startExec, ttyCommand } from '../../../src/runtime/exec.ts'
import type { PreparedExec } from '../../../src/runtime/types.ts'

const log = pino({ level: 'silent' })
const PATH = '/usr/local/bin:/usr/bin:/bin'

function local(argv: string[], over: Partial<PreparedExec> = {}) {
  const counter = { cleanups: 0 }
  const prepared: PreparedExec = {
    argv,
    env: { PATH },
    cwd: '/',
    pidFile: null,
    cleanup: async () => {
      counter.cleanups++
    },
    ...over,
  }
  return { prepared, counter }
}

/** Everything the session prints, as it comes; `until` waits for a pattern. */
function collect(s: ExecProcess) {
  const out = { stdout: '', stderr: '' }
  s.stdout.on('data', (d: Buffer) => {
    out.stdout += d.toString('utf8')
  })
  s.stderr?.on('data', (d: Buffer) => {
    out.stderr += d.toString('utf8')
  })
  const until = async (re: RegExp, ms = 5_000) => {
    const deadline = Date.now() + ms
    while (!re.test(out.stdout)) {
      if (Date.now() > deadline) assert.fail(`no ${re} in ${JSON.stringify(out.stdout)}`)
      await new Promise((r) => setTimeout(r, 10))
    }
  }
  return { out, until }
}

const sane = (s: string) => !s.includes('\0') && Buffer.from(s, 'utf8').toString('utf8') === s
const tricky = fc.constantFrom(
  "'",
  '"',
  '\\',
  '$',
  '`',
  '\n',
  ' ',
  '*',
  '!',
  ';',
  '&',
  '|',
  '-e',
  '~',
  '$(x)',
  '',
)

describe('shQuote', () => {
  it('makes sh read back exactly the arguments given', () => {
    const arg = fc.oneof(tricky, fc.string({ unit: 'binary', maxLength: 12 }), fc.string({ maxLength: 12 }))
    fc.assert(
      fc.property(
        fc.array(
          fc.array(arg, { maxLength: 4 }).map((parts) => parts.join('')),
          { minLength: 1, maxLength: 8 },
        ),
        (args) => {
          fc.pre(args.every(sane))
          const out = execFileSync('/bin/sh', ['-c', `printf '%s\\0' ${args.map(shQuote).join(' ')}`])
          assert.deepEqual(out.toString('utf8').split('\0').slice(0, -1), args)
        },
      ),
      { numRuns: 150 },
    )
  })

  it('refuses a NUL byte, which no argument can hold', () => {
    assert.throws(() => shQuote('a\0b'), { code: 'ERR_INVALID' })
  })

  it('builds the terminal command: size, pid, SHELL, then exec of the quoted argv', () => {
    const cmd = ttyCommand(['/bin/echo', "it's"], {
      cols: 100,
      rows: 30,
      stty: '/usr/bin/stty',
      pidFile: '/tmp/x/pid',
      shell: undefined,
    })
    assert.equal(
      cmd,
      `'/usr/bin/stty' cols 100 rows 30 2>/dev/null; echo $$ > '/tmp/x/pid'; unset SHELL; exec '/bin/echo' 'it'\\''s'`,
    )
    assert.match(
      ttyCommand(['x'], { cols: 1, rows: 1, stty: 'stty', pidFile: null, shell: '/bin/bash' }),
      /^'stty' cols 1 rows 1 2>\/dev\/null; SHELL='\/bin\/bash'; export SHELL; exec 'x'$/,
    )
  })
})

describe('startExec without a terminal', () => {
  it('relays stdin, stdout and stderr apart, returns the exit code and cleans up once', async () => {
    const { prepared, counter } = local(['/bin/sh', '-c', 'read x; echo got $x; echo oops >&2; exit 3'])
    const s = startExec(prepared, { tty: false, log })
    const { out } = collect(s)
    s.stdin.end('hello\n')
    assert.deepEqual(await s.exited, { code: 3, signal: null })
    assert.equal(out.stdout, 'got hello\n')
    assert.equal(out.stderr, 'oops\n')
    assert.equal(counter.cleanups, 1)
    s.resize(10, 10) // nothing, and no throw
  })

  it('uses the prepared environment and working directory', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'pwd; echo "$FOO"'], {
      env: { PATH, FOO: 'bar baz' },
      cwd: tmpdir(),
    })
    const s = startExec(prepared, { tty: false, log })
    const { out } = collect(s)
    s.stdin.end()
    assert.equal((await s.exited).code, 0)
    assert.equal(out.stdout, `${tmpdir()}\nbar baz\n`)
  })

  it('kill signals the program', async () => {
    const { prepared } = local(['/bin/sleep', '30'])
    const s = startExec(prepared, { tty: false, log })
    collect(s)
    await new Promise((r) => setTimeout(r, 50))
    s.kill('SIGTERM')
    assert.deepEqual(await s.exited, { code: null, signal: 'SIGTERM' })
  })

  it('rejects with ERR_EXEC_START when the program cannot start, and still cleans up', async () => {
    const { prepared, counter } = local(['/nonexistent/km1s-program'])
    const s = startExec(prepared, { tty: false, log })
    await assert.rejects(s.exited, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_EXEC_START')
      assert.match(err.message, /^Could not start \/nonexistent\/km1s-program: ENOENT\.$/)
      return true
    })
    assert.equal(counter.cleanups, 1)
  })

  it('ends once the program exited even if a process it left holds its output open', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'sleep 3 & echo $!; exit 4'])
    const s = startExec(prepared, { tty: false, log })
    const { out } = collect(s)
    s.stdin.end()
    const t0 = Date.now()
    try {
      assert.equal((await s.exited).code, 4)
      assert.ok(Date.now() - t0 < 2_800, `took ${Date.now() - t0} ms`)
    } finally {
      const pid = Number(out.stdout.trim())
      if (pid > 1) process.kill(pid, 'SIGKILL')
    }
  })
})

describe('startExec with a terminal', () => {
  it('gives the program a terminal of the asked size; input echoes; exit code comes back', async () => {
    const { prepared, counter } = local([
      '/bin/sh',
      '-c',
      'test -t 0 && echo is-a-tty; stty size; read x; echo got $x; exit 3',
    ])
    const s = startExec(prepared, { tty: true, cols: 100, rows: 30, log })
    assert.equal(s.stderr, null)
    const { out, until } = collect(s)
    await until(/30 100/)
    s.stdin.write('hello\n')
    await until(/got hello/)
    assert.deepEqual(await s.exited, { code: 3, signal: null })
    assert.match(out.stdout, /^is-a-tty\r\n30 100\r\nhello\r\ngot hello\r\n$/)
    assert.equal(counter.cleanups, 1)
  })

  it('stderr comes through the terminal, and ending stdin is end of file', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'echo err >&2; cat; echo done'])
    const s = startExec(prepared, { tty: true, log })
    const { out, until } = collect(s)
    await until(/err\r\n/)
    s.stdin.end('line\n')
    assert.equal((await s.exited).code, 0)
    assert.match(out.stdout, /^err\r\nline\r\nline\r\ndone\r\n$/)
  })

  it('resize reaches the program: SIGWINCH, and the new size', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'trap "echo WINCH" WINCH; echo ready; sleep 0.5; stty size'])
    const s = startExec(prepared, { tty: true, cols: 80, rows: 24, log })
    const { out, until } = collect(s)
    await until(/ready/)
    s.resize(132, 43)
    s.stdin.end()
    assert.equal((await s.exited).code, 0)
    assert.match(out.stdout, /WINCH\r\n43 132\r\n$/)
  })

  it('resize before the program wrote its pid still applies, after it did', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'sleep 0.4; stty size'])
    const s = startExec(prepared, { tty: true, cols: 80, rows: 24, log })
    s.resize(90, 20)
    const { out } = collect(s)
    s.stdin.end()
    assert.equal((await s.exited).code, 0)
    assert.match(out.stdout, /20 90\r\n$/)
  })

  it('Ctrl-C (0x03 on stdin) is SIGINT for the program', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'trap "echo INT; exit 9" INT; echo ready; sleep 5'])
    const s = startExec(prepared, { tty: true, log })
    const { out, until } = collect(s)
    await until(/ready/)
    s.stdin.write('\x03')
    assert.deepEqual(await s.exited, { code: 9, signal: null })
    assert.match(out.stdout, /INT\r\n$/)
  })

  it('kill signals the program itself, whose status script reports as 128 + N', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'echo ready; exec sleep 30'])
    const s = startExec(prepared, { tty: true, log })
    const { until } = collect(s)
    await until(/ready/)
    s.kill('SIGTERM')
    assert.deepEqual(await s.exited, { code: 143, signal: null })
  })

  it('SHELL is the prepared one inside (script itself runs sh), and its own pid file is removed', async () => {
    // A temporary directory of this test's own: other test files running at the same time (remote/'s
    // exec -it) make and remove km1s-exec-* directories in the shared one, which this check would see.
    const sharedTmp = process.env.TMPDIR
    const ownTmp = mkdtempSync(join(tmpdir(), 'km1s-exectest-'))
    process.env.TMPDIR = ownTmp
    try {
      await shellAndPidFile(ownTmp)
    } finally {
      if (sharedTmp === undefined) delete process.env.TMPDIR
      else process.env.TMPDIR = sharedTmp
      rmSync(ownTmp, { recursive: true, force: true })
    }
  })

  async function shellAndPidFile(ownTmp: string): Promise<void> {
    const { prepared } = local([
      '/bin/sh',
      '-c',
      'env | grep -q "^SHELL=" && echo "shell=$SHELL" || echo shell=unset',
    ])
    const s = startExec(prepared, { tty: true, log })
    const { out } = collect(s)
    s.stdin.end()
    await s.exited
    assert.match(out.stdout, /^shell=unset\r\n$/)
    const withShell = local(['/bin/sh', '-c', 'echo "shell=$SHELL"'], { env: { PATH, SHELL: '/bin/bash' } })
    const s2 = startExec(withShell.prepared, { tty: true, log })
    const c2 = collect(s2)
    s2.stdin.end()
    await s2.exited
    assert.match(c2.out.stdout, /^shell=\/bin\/bash\r\n$/)
    const left = execFileSync('/bin/sh', ['-c', `ls -d ${ownTmp}/km1s-exec-* 2>/dev/null || true`]).toString()
    assert.equal(left, '')
  }

  it('uses the runtime pid file when there is one', async () => {
    const { prepared } = local(['/bin/sh', '-c', 'echo $$ > "$PIDF"; echo ready; sleep 0.5; stty size'], {
      env: { PATH, PIDF: `${tmpdir()}/km1s-exectest-${process.pid}.pid` },
    })
    prepared.pidFile = `${tmpdir()}/km1s-exectest-${process.pid}.pid`
    const s = startExec(prepared, { tty: true, log })
    const { out, until } = collect(s)
    await until(/ready/)
    s.resize(77, 22)
    s.stdin.end()
    await s.exited
    assert.match(out.stdout, /22 77\r\n$/)
    execFileSync('rm', ['-f', prepared.pidFile])
    assert.equal(existsSync(prepared.pidFile), false)
  })
})
