import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import * as fs from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import fc from 'fast-check'
import { pino } from 'pino'
import { isKm1sError } from '../../../src/common/errors.ts'
import {
  type CriRecord,
  defaultLogRoot,
  formatCriLine,
  formatCriTime,
  type LogFs,
  MAX_LINE_BYTES,
  makeFifo,
  ProcessLog,
  parseCriLine,
  parseSince,
  readLogs,
  utf8Cut,
} from '../../../src/runtime/logs.ts'
import type { LogEntry, LogQuery } from '../../../src/runtime/types.ts'
import { until } from '../until.ts'

const execFileP = promisify(execFile)
const silent = pino({ level: 'silent' })
const MAX_NS = 253402300799999999999n // 9999-12-31T23:59:59.999999999Z

function capture() {
  const lines: Array<{ level: number; msg: string }> = []
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) })
  return { log, lines }
}

/** The records of one process, oldest file first. */
function records(dir: string, process: string): CriRecord[] {
  const base = join(dir, `${process}.log`)
  const rotated = fs
    .readdirSync(dir)
    .filter((n) => n.startsWith(`${process}.log.`))
    .map((n) => Number(n.slice(process.length + 5)))
    .sort((a, b) => b - a)
  const out: CriRecord[] = []
  for (const path of [...rotated.map((i) => `${base}.${i}`), base]) {
    if (!fs.existsSync(path)) continue
    for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
      if (line === '') continue
      const rec = parseCriLine(line)
      assert.ok(rec, `a CRI record: ${line.slice(0, 80)}`)
      out.push(rec)
    }
  }
  return out
}

async function collect(iter: AsyncIterable<LogEntry>): Promise<LogEntry[]> {
  const out: LogEntry[] = []
  for await (const e of iter) out.push(e)
  return out
}

let root: string
before(() => {
  root = fs.mkdtempSync(join(tmpdir(), 'km1s-logs-'))
})
after(() => {
  fs.rmSync(root, { recursive: true, force: true })
})
let n = 0
function tmp(): string {
  const d = join(root, `t${n++}`)
  fs.mkdirSync(d)
  return d
}

describe('the CRI log format', () => {
  it('formats and parses the example of the format', () => {
    const line = '2016-10-06T00:17:09.669794202Z stdout F hello world'
    assert.equal(formatCriLine(1475713029669794202n, 'stdout', false, 'hello world'), line)
    assert.deepEqual(parseCriLine(line), {
      time: '2016-10-06T00:17:09.669794202Z',
      ms: 1475713029669,
      stream: 'stdout',
      partial: false,
      text: 'hello world',
    })
    assert.equal(
      formatCriLine(new Date('2016-10-06T00:17:09.669Z'), 'stderr', true, 'x'),
      '2016-10-06T00:17:09.669000000Z stderr P x',
    )
  })

  it('parses what other writers produce: offsets, short fractions, extra tags, no content', () => {
    assert.equal(
      parseCriLine('2016-10-06T02:17:09.669794202+02:00 stdout F a')?.time,
      '2016-10-06T00:17:09.669794202Z',
    )
    assert.equal(
      parseCriLine('2016-10-05T23:47:09.5-00:30 stdout F a')?.time,
      '2016-10-06T00:17:09.500000000Z',
    )
    assert.equal(parseCriLine('2016-10-06T00:17:09Z stderr F a')?.ms, 1475713029000)
    assert.equal(parseCriLine('2016-10-06T00:17:09.1Z stdout P:x:y a b ')?.text, 'a b ')
    assert.equal(parseCriLine('2016-10-06T00:17:09.1Z stdout F')?.text, '')
    assert.equal(parseCriLine('2016-10-06T00:17:09.1Z stdout F \n')?.text, '')
    assert.equal(parseCriLine('2016-10-06T00:17:09.1Z stdout F  two spaces\r')?.text, ' two spaces\r')
  })

  it('returns undefined for garbage', () => {
    for (const bad of [
      '',
      'hello',
      '2016-10-06T00:17:09.669794202Z stdin F x',
      '2016-10-06T00:17:09.669794202Z stdout X x',
      '2016-10-06T00:17:09.669794202 stdout F x',
      '2016-13-06T00:17:09Z stdout F x',
      '2023-02-29T00:17:09Z stdout F x',
      '2016-10-06T24:17:09Z stdout F x',
      '2016-10-06T00:17:60Z stdout F x',
      '2016-10-06T00:17:09.1234567890Z stdout F x',
      '2016-10-06T00:17:09Z stdout Fx',
      '2016-10-06T00:17:09+25:00 stdout F x',
      '0000-01-01T00:00:00+01:00 stdout F x',
    ]) {
      assert.equal(parseCriLine(bad), undefined, bad)
    }
  })

  it('round-trips any time, stream, tag and text without a newline', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: MAX_NS }),
        fc.constantFrom('stdout' as const, 'stderr' as const),
        fc.boolean(),
        fc.string({ unit: 'binary' }).filter((s) => !s.includes('\n')),
        (ns, stream, partial, text) => {
          const line = formatCriLine(ns, stream, partial, text)
          assert.deepEqual(parseCriLine(line), {
            time: formatCriTime(ns),
            ms: Number(ns / 1_000_000n),
            stream,
            partial,
            text,
          })
          assert.deepEqual(parseCriLine(`${line}\n`), parseCriLine(line))
        },
      ),
      { numRuns: 2000 },
    )
  })

  it('orders times as strings the way they are ordered as numbers', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: MAX_NS }), fc.bigInt({ min: 0n, max: MAX_NS }), (a, b) => {
        const [ta, tb] = [formatCriTime(a), formatCriTime(b)]
        assert.equal(ta < tb, a < b)
        assert.equal(ta === tb, a === b)
      }),
    )
  })

  it('never throws on any input, also on damaged records', () => {
    const valid = formatCriLine(1475713029669794202n, 'stdout', false, 'text')
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 80 }), (s) => {
        const r = parseCriLine(s)
        assert.ok(r === undefined || typeof r.time === 'string')
      }),
      { numRuns: 2000 },
    )
    fc.assert(
      fc.property(fc.nat(valid.length - 1), fc.string({ unit: 'binary', maxLength: 3 }), (at, s) => {
        const r = parseCriLine(valid.slice(0, at) + s + valid.slice(at + 1))
        if (r !== undefined) assert.match(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/)
      }),
      { numRuns: 2000 },
    )
  })

  it('puts a newline in the text as a space', () => {
    assert.equal(parseCriLine(formatCriLine(0n, 'stdout', false, 'a\nb'))?.text, 'a b')
  })

  it('cuts UTF-8 only between characters', () => {
    const buf = Buffer.from('aé€😀')
    assert.equal(utf8Cut(buf, 2), 1)
    assert.equal(utf8Cut(buf, 3), 3)
    assert.equal(utf8Cut(buf, 5), 3)
    assert.equal(utf8Cut(buf, 7), 6)
    assert.equal(utf8Cut(buf, 100), buf.length)
    assert.equal(utf8Cut(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80]), 4), 4)
  })
})

describe('parseSince', () => {
  const now = Date.parse('2024-05-01T12:00:00Z')
  it('takes durations before now', () => {
    assert.equal(parseSince('10s', now), now - 10_000)
    assert.equal(parseSince('5m', now), now - 300_000)
    assert.equal(parseSince('2h', now), now - 7_200_000)
    assert.equal(parseSince('1d', now), now - 86_400_000)
    assert.equal(parseSince('1h30m', now), now - 5_400_000)
    assert.equal(parseSince(' 0s ', now), now)
  })
  it('takes ISO times, local when they have no zone', () => {
    assert.equal(parseSince('2024-05-01T10:00:00Z', now), Date.parse('2024-05-01T10:00:00Z'))
    assert.equal(parseSince('2024-05-01T10:00:00.25Z', now), Date.parse('2024-05-01T10:00:00.250Z'))
    assert.equal(parseSince('2024-05-01T12:00+02:00', now), Date.parse('2024-05-01T10:00:00Z'))
    assert.equal(parseSince('2024-05-01T08:00:00-0200', now), Date.parse('2024-05-01T10:00:00Z'))
    assert.equal(parseSince('2024-05-01T10:00', now), new Date(2024, 4, 1, 10, 0).getTime())
    assert.equal(parseSince('2024-05-01', now), new Date(2024, 4, 1).getTime())
  })
  it('refuses anything else with one sentence', () => {
    for (const bad of [
      '',
      '10',
      '10x',
      '-5m',
      'yesterday',
      '2024-02-30',
      '2024-05-01T25:00Z',
      '2024-05-01T10:00+24:00',
    ]) {
      assert.throws(
        () => parseSince(bad, now),
        (err: unknown) => isKm1sError(err) && err.code === 'ERR_INVALID_SINCE' && /\.$/.test(err.message),
        bad,
      )
    }
  })
})

describe('defaultLogRoot', () => {
  it('is RAM-backed /run for root, under the data directory otherwise', () => {
    assert.equal(
      defaultLogRoot('/var/lib/km1s', 0, () => true),
      '/run/km1s/logs',
    )
    assert.equal(
      defaultLogRoot('/var/lib/km1s', 0, () => false),
      '/var/lib/km1s/logs',
    )
    assert.equal(
      defaultLogRoot('/home/u/.local/share/km1s', 1000, () => true),
      '/home/u/.local/share/km1s/logs',
    )
  })
})

describe('makeFifo', () => {
  it('makes a FIFO of mode 0600, does nothing the second time, refuses anything else', async () => {
    const dir = tmp()
    const path = join(dir, 'stdout')
    await makeFifo(path)
    const st = fs.statSync(path)
    assert.ok(st.isFIFO())
    assert.equal(st.mode & 0o777, 0o600)
    await makeFifo(path)
    assert.equal(fs.statSync(path).ino, st.ino)
    fs.writeFileSync(join(dir, 'file'), '')
    await assert.rejects(
      makeFifo(join(dir, 'file')),
      (err: unknown) => isKm1sError(err) && err.code === 'ERR_NOT_A_FIFO',
    )
    await assert.rejects(
      makeFifo(join(dir, 'missing', 'x')),
      (err: unknown) => isKm1sError(err) && err.code === 'ERR_MKFIFO',
    )
  })
})

/** The test plays the shim: it holds the FIFO read-write (never reading) and writes into it. */
async function fifoPair(dir: string, name = 'stdout') {
  const path = join(dir, name)
  await makeFifo(path)
  const holder = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_NONBLOCK)
  const writer = fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)
  return {
    path,
    write: (s: string | Buffer) => {
      const buf = Buffer.from(s)
      assert.equal(fs.writeSync(writer, buf), buf.length, 'the pipe has room')
    },
    close: () => {
      fs.closeSync(writer)
      fs.closeSync(holder)
    },
  }
}

function fdsOn(path: string): number {
  let count = 0
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`) === path) count++
    } catch {}
  }
  return count
}

describe('ProcessLog', () => {
  it('keeps the files within maxBytes × files while a process writes ten times as much', async () => {
    const dir = tmp()
    const fifo = join(dir, 'stdout')
    await makeFifo(fifo)
    const maxBytes = 64 * 1024
    const files = 3
    const pl = new ProcessLog({ dir, process: 'main', maxBytes, files, log: silent })
    try {
      pl.attach('stdout', fifo)
      const count = Math.ceil((10 * maxBytes) / 100)
      const started = Date.now()
      await execFileP('/bin/sh', [
        '-c',
        'i=0; while [ $i -lt "$2" ]; do printf "line %06d %s\\n" $i "$3"; i=$((i+1)); done > "$1"',
        'writer',
        fifo,
        String(count),
        'x'.repeat(50),
      ])
      const last = `line ${String(count - 1).padStart(6, '0')} `
      await until('the last line', () => fs.readFileSync(pl.path, 'utf8').includes(last))
      const ms = Date.now() - started
      const names = fs.readdirSync(dir).sort()
      assert.deepEqual(names, ['main.log', 'main.log.1', 'main.log.2', 'stdout'])
      let total = 0
      for (const name of names.filter((x) => x.startsWith('main.log'))) {
        const size = fs.statSync(join(dir, name)).size
        assert.ok(size <= maxBytes, `${name} ${size}`)
        total += size
      }
      assert.ok(total <= maxBytes * files + 200, `total ${total}`)
      const recs = records(dir, 'main')
      const numbers = recs.map((r) => Number(r.text.slice(5, 11)))
      // The newest lines, all of them, in order.
      assert.equal(numbers.at(-1), count - 1)
      for (let i = 1; i < numbers.length; i++) assert.equal(numbers[i], (numbers[i - 1] as number) + 1)
      assert.ok(numbers.length > (2 * maxBytes) / 100, `${numbers.length} lines kept`)
      assert.ok(recs.every((r) => r.stream === 'stdout' && !r.partial))
      const s = pl.stats
      assert.equal(s.lines, count)
      assert.ok(s.rotations >= 9, `${s.rotations} rotations`)
      assert.equal(s.errors, 0)
      // Seen here: ~6,600 lines, 650 KiB through a FIFO in well under a second.
      assert.ok(ms < 10_000, `${ms} ms`)
    } finally {
      await pl.close()
    }
  })

  it('writes a line without its newline as a partial record after a while, and long lines in pieces', async () => {
    const dir = tmp()
    const fifo = await fifoPair(dir)
    const pl = new ProcessLog({ dir, process: 'main', log: silent, partialFlushMs: 100 })
    try {
      pl.attach('stdout', fifo.path)
      fifo.write('Password: ')
      await until('the partial line', () => records(dir, 'main').length === 1)
      fifo.write('secret\n')
      const long = `a${'é'.repeat(20_000)}` // 40,001 bytes: cut points fall inside characters
      fifo.write(`${long}\n`)
      fifo.write('x'.repeat(MAX_LINE_BYTES)) // a full piece without a newline is written at once
      await until('all pieces', () => records(dir, 'main').length === 6)
      const recs = records(dir, 'main')
      assert.deepEqual(
        recs.map((r) => [r.partial, r.text.length]),
        [
          [true, 10],
          [false, 6],
          [true, 8192],
          [true, 8192],
          [false, 20_001 - 16_384],
          [true, MAX_LINE_BYTES],
        ],
      )
      assert.equal(recs[0]?.text, 'Password: ')
      assert.equal(recs[2]?.text.startsWith('a'), true)
      assert.ok(recs.every((r) => !r.text.includes('\uFFFD')))
      assert.equal(recs[2]?.text.concat(recs[3]?.text ?? '', recs[4]?.text ?? ''), long)
      for (const r of recs.slice(2, 4)) assert.ok(Buffer.byteLength(r.text) <= MAX_LINE_BYTES)
    } finally {
      await pl.close()
      fifo.close()
    }
  })

  it('keeps a split UTF-8 character for the next read when the partial timer fires', async () => {
    const dir = tmp()
    const fifo = await fifoPair(dir)
    const pl = new ProcessLog({ dir, process: 'main', log: silent, partialFlushMs: 50 })
    try {
      pl.attach('stdout', fifo.path)
      const euro = Buffer.from('€')
      fifo.write(Buffer.concat([Buffer.from('ab'), euro.subarray(0, 1)]))
      await until('the partial line', () => records(dir, 'main').length === 1)
      fifo.write(Buffer.concat([euro.subarray(1), Buffer.from('c\n')]))
      await until('the rest', () => records(dir, 'main').length === 2)
      assert.deepEqual(
        records(dir, 'main').map((r) => r.text),
        ['ab', '€c'],
      )
    } finally {
      await pl.close()
      fifo.close()
    }
  })

  it('reads on when a writer goes away and another comes: no EOF', async () => {
    const dir = tmp()
    const fifo = join(dir, 'stderr')
    await makeFifo(fifo)
    const pl = new ProcessLog({ dir, process: 'main', log: silent })
    try {
      pl.attach('stderr', fifo)
      await execFileP('/bin/sh', ['-c', 'echo one > "$1"', 'w', fifo])
      await until('one', () => pl.stats.lines === 1)
      await new Promise((r) => setTimeout(r, 50))
      await execFileP('/bin/sh', ['-c', 'echo two > "$1"; echo three > "$1"', 'w', fifo])
      await until('three', () => pl.stats.lines === 3)
      assert.deepEqual(
        records(dir, 'main').map((r) => [r.stream, r.text]),
        [
          ['stderr', 'one'],
          ['stderr', 'two'],
          ['stderr', 'three'],
        ],
      )
    } finally {
      await pl.close()
    }
  })

  it('loses nothing between two ProcessLogs: what waits in the pipe is read by the next', async () => {
    const dir = tmp()
    const fifo = await fifoPair(dir)
    try {
      fifo.write('before anyone reads\n')
      const first = new ProcessLog({ dir, process: 'main', log: silent, partialFlushMs: 60_000 })
      first.attach('stdout', fifo.path)
      await until('the first line', () => first.stats.lines === 1)
      fifo.write('1\n2\nhalf of')
      await until('two more', () => first.stats.lines === 3)
      await first.close()
      assert.equal(first.stats.lines, 4, 'the half line is written at close')
      assert.equal(fdsOn(fs.realpathSync(fifo.path)), 2, 'only the test’s own descriptors remain')
      for (let i = 3; i < 500; i++) fifo.write(`${i}\n`) // ~2 KiB: waits in the pipe
      const second = new ProcessLog({ dir, process: 'main', log: silent })
      second.attach('stdout', fifo.path)
      await until('the waiting lines', () => second.stats.lines === 497)
      fifo.write(' a line\n')
      await until('the rest of the line', () => second.stats.lines === 498)
      await second.close()
      const texts = records(dir, 'main').map((r) => (r.partial ? `${r.text}…` : r.text))
      const want = ['before anyone reads', '1', '2', 'half of…']
      for (let i = 3; i < 500; i++) want.push(String(i))
      want.push(' a line')
      assert.deepEqual(texts, want)
    } finally {
      fifo.close()
    }
  })

  it('writes notes on stderr after what the process wrote before', async () => {
    const dir = tmp()
    const fifo = await fifoPair(dir, 'stderr')
    const pl = new ProcessLog({ dir, process: 'main', log: silent, partialFlushMs: 60_000 })
    try {
      pl.attach('stderr', fifo.path)
      fifo.write('panic: ')
      await new Promise((r) => setTimeout(r, 50))
      pl.note('exited with code 3')
      pl.note('km1s: restarting in 1s\nsecond line')
      await pl.close()
      pl.note('after close: dropped')
      assert.deepEqual(
        records(dir, 'main').map((r) => [r.stream, r.partial, r.text]),
        [
          ['stderr', true, 'panic: '],
          ['stderr', false, 'km1s: exited with code 3'],
          ['stderr', false, 'km1s: restarting in 1s'],
          ['stderr', false, 'second line'],
        ],
      )
      const times = records(dir, 'main').map((r) => r.time)
      assert.deepEqual([...times].sort(), times, 'stamps increase within a millisecond')
      assert.equal(new Set(times).size, times.length)
    } finally {
      fifo.close()
    }
  })

  it('appends to the file an earlier agent left and removes rotated files beyond the bound', async () => {
    const dir = tmp()
    const old = `${formatCriLine(1n, 'stdout', false, 'old')}\n`
    fs.writeFileSync(join(dir, 'main.log'), old)
    for (const i of [1, 2, 3, 7]) fs.writeFileSync(join(dir, `main.log.${i}`), old)
    fs.writeFileSync(join(dir, 'other.log.5'), old)
    const pl = new ProcessLog({ dir, process: 'main', files: 2, log: silent })
    pl.note('new')
    await pl.close()
    assert.deepEqual(fs.readdirSync(dir).sort(), ['main.log', 'main.log.1', 'other.log.5'])
    assert.deepEqual(
      records(dir, 'main').map((r) => r.text),
      ['old', 'old', 'km1s: new'],
    )
  })

  it('with files = 1 keeps one file', async () => {
    const dir = tmp()
    const pl = new ProcessLog({ dir, process: 'main', files: 1, maxBytes: 4096, log: silent })
    for (let i = 0; i < 500; i++) pl.note(`line ${i}`)
    await pl.close()
    assert.deepEqual(fs.readdirSync(dir), ['main.log'])
    assert.ok(fs.statSync(join(dir, 'main.log')).size <= 4096)
    assert.equal(records(dir, 'main').at(-1)?.text, 'km1s: line 499')
  })

  it('refuses bad options', () => {
    for (const bad of [
      { dir: 'relative', process: 'main' },
      { dir: '/x', process: '../etc' },
      { dir: '/x', process: 'main', maxBytes: 100 },
      { dir: '/x', process: 'main', files: 0 },
    ]) {
      assert.throws(
        () => new ProcessLog({ ...bad, log: silent }),
        (err: unknown) => isKm1sError(err) && err.code === 'ERR_INVALID_LOG_OPTIONS',
      )
    }
  })

  it('refuses a path that is not a FIFO, and a missing one', async () => {
    const dir = tmp()
    fs.writeFileSync(join(dir, 'file'), '')
    const pl = new ProcessLog({ dir, process: 'main', log: silent })
    assert.throws(
      () => pl.attach('stdout', join(dir, 'file')),
      (e: unknown) => isKm1sError(e) && e.code === 'ERR_NOT_A_FIFO',
    )
    assert.throws(
      () => pl.attach('stdout', join(dir, 'missing')),
      (e: unknown) => isKm1sError(e) && e.code === 'ERR_LOG_FIFO',
    )
    assert.equal(fdsOn(join(dir, 'file')), 0)
    await pl.close()
  })

  it('counts a full disk (ENOSPC from /dev/full) and logs it once, never throws', async () => {
    const dir = tmp()
    fs.symlinkSync('/dev/full', join(dir, 'main.log'))
    const { log, lines } = capture()
    const pl = new ProcessLog({ dir, process: 'main', log })
    for (let i = 0; i < 5; i++) pl.note(`line ${i}`)
    await pl.close()
    const s = pl.stats
    assert.equal(s.errors, 5)
    assert.equal(s.droppedLines, 5)
    assert.equal(s.lines, 0)
    assert.equal(lines.filter((l) => l.level === 40).length, 1)
  })

  it('drops lines rather than break the bound when rotating fails, and recovers', async () => {
    const dir = tmp()
    let failRename = true
    const fakeFs: LogFs = {
      ...fs,
      renameSync: (from: fs.PathLike, to: fs.PathLike) => {
        if (failRename) throw Object.assign(new Error('EIO: i/o error, rename'), { code: 'EIO' })
        fs.renameSync(from, to)
      },
    }
    const { log, lines } = capture()
    const pl = new ProcessLog({ dir, process: 'main', maxBytes: 4096, log, fs: fakeFs })
    for (let i = 0; i < 200; i++) pl.note(`line ${i}`)
    assert.ok(fs.statSync(pl.path).size <= 4096)
    const s = pl.stats
    assert.ok(s.errors > 0 && s.droppedLines > 0 && s.errors === s.droppedLines, JSON.stringify(s))
    assert.equal(s.lines + s.droppedLines, 200)
    failRename = false
    pl.note('after')
    await pl.close()
    assert.equal(records(dir, 'main').at(-1)?.text, 'km1s: after')
    assert.equal(pl.stats.rotations, 1)
    assert.deepEqual(
      lines.map((l) => l.msg),
      [
        'cannot rotate the log of a process; its lines are dropped until this works again',
        'writing the log of a process again',
      ],
    )
  })

  it('counts the loss of its directory (a container removed under it)', async () => {
    const dir = join(tmp(), 'ctr')
    const pl = new ProcessLog({ dir, process: 'main', maxBytes: 4096, log: silent })
    pl.note('first')
    fs.rmSync(dir, { recursive: true })
    for (let i = 0; i < 200; i++) pl.note(`line ${i}`)
    await pl.close()
    assert.ok(pl.stats.droppedLines > 0)
    assert.equal(fs.existsSync(dir), false, 'not made again')
  })
})

describe('readLogs', () => {
  const T0 = 1_700_000_000_000n * 1_000_000n
  const at = (s: number) => T0 + BigInt(s) * 1_000_000_000n
  const line = (s: number, stream: 'stdout' | 'stderr', text: string) =>
    `${formatCriLine(at(s), stream, false, text)}\n`
  const msAt = (s: number) => Number(at(s) / 1_000_000n)

  function fixture(): string {
    const dir = tmp()
    fs.writeFileSync(join(dir, 'web.log.2'), line(0, 'stdout', 'w0') + line(2, 'stdout', 'w2'))
    fs.writeFileSync(
      join(dir, 'web.log.1'),
      `${line(4, 'stderr', 'w4')}not a record\n${line(6, 'stdout', 'w6')}`,
    )
    fs.writeFileSync(join(dir, 'web.log'), line(8, 'stdout', 'w8') + line(10, 'stdout', 'w10'))
    fs.writeFileSync(join(dir, 'db.log.1'), line(1, 'stdout', 'd1') + line(4, 'stdout', 'd4'))
    fs.writeFileSync(
      join(dir, 'db.log'),
      `${line(9, 'stderr', 'd9')}2024 garbage\n\n${line(11, 'stdout', 'd11')}`,
    )
    fs.writeFileSync(join(dir, 'webx.log'), line(3, 'stdout', 'not web'))
    return dir
  }
  const texts = (es: LogEntry[]) => es.map((e) => e.line)
  const read = (dir: string, q: LogQuery) => collect(readLogs(dir, ['web', 'db', 'idle'], q))

  it('merges the rotated files of every process in time order, skipping garbage', async () => {
    const dir = fixture()
    const all = await read(dir, {})
    assert.deepEqual(texts(all), ['w0', 'd1', 'w2', 'w4', 'd4', 'w6', 'w8', 'd9', 'w10', 'd11'])
    assert.deepEqual(all[3], { time: formatCriTime(at(4)), process: 'web', stream: 'stderr', line: 'w4' })
    assert.equal(all[4]?.process, 'db', 'ties: in the order of the processes')
  })

  it('filters by process, since and tail', async () => {
    const dir = fixture()
    assert.deepEqual(texts(await read(dir, { process: 'db' })), ['d1', 'd4', 'd9', 'd11'])
    assert.deepEqual(texts(await read(dir, { process: 'nope' })), [])
    assert.deepEqual(texts(await read(dir, { sinceMs: msAt(6) })), ['w6', 'w8', 'd9', 'w10', 'd11'])
    assert.deepEqual(texts(await read(dir, { sinceMs: msAt(6) + 1 })), ['w8', 'd9', 'w10', 'd11'])
    assert.deepEqual(texts(await read(dir, { tail: 3 })), ['d9', 'w10', 'd11'])
    assert.deepEqual(texts(await read(dir, { tail: 0 })), [])
    assert.deepEqual(texts(await read(dir, { tail: 100, sinceMs: msAt(9) })), ['d9', 'w10', 'd11'])
    assert.deepEqual(texts(await read(dir, { tail: 2, process: 'web' })), ['w8', 'w10'])
    assert.deepEqual(texts(await collect(readLogs(join(dir, 'missing'), ['web'], {}))), [])
  })

  it('reads consistently while a ProcessLog writes and rotates', async () => {
    const dir = tmp()
    const pl = new ProcessLog({ dir, process: 'main', maxBytes: 4096, files: 3, log: silent })
    let i = 0
    const writer = setInterval(() => {
      for (let k = 0; k < 20; k++) pl.note(`n ${i++}`)
    }, 1)
    try {
      for (let round = 0; round < 100; round++) {
        const nums = (await collect(readLogs(dir, ['main'], {}))).map((e) => Number(e.line.slice(8)))
        for (let k = 1; k < nums.length; k++)
          assert.equal(nums[k], (nums[k - 1] as number) + 1, `round ${round}`)
      }
      assert.ok(pl.stats.rotations > 5, `${pl.stats.rotations} rotations`)
    } finally {
      clearInterval(writer)
      await pl.close()
    }
  })

  it('follows new lines across rotations, also two between polls, until aborted', async () => {
    const dir = tmp()
    const pl = new ProcessLog({ dir, process: 'main', maxBytes: 4096, files: 4, log: silent })
    const fifo = await fifoPair(dir)
    pl.attach('stdout', fifo.path)
    for (let i = 0; i < 10; i++) pl.note(`n ${i}`)
    const ac = new AbortController()
    const seen: LogEntry[] = []
    const done = (async () => {
      for await (const e of readLogs(dir, ['main', 'other'], { follow: true, tail: 2, signal: ac.signal }))
        seen.push(e)
    })()
    try {
      let next = 10
      const burst = (k: number) => {
        for (let j = 0; j < k; j++) pl.note(`n ${next++}`)
      }
      await until('the tail', () => seen.length === 2)
      burst(50) // a rotation at most
      await new Promise((r) => setTimeout(r, 300))
      burst(150) // two rotations between two polls
      await new Promise((r) => setTimeout(r, 300))
      burst(30)
      fifo.write('from the process\n')
      await until('everything', () => seen.length === 2 + 230 + 1)
      assert.ok(pl.stats.rotations >= 3, `${pl.stats.rotations} rotations`)
      const nums = seen.slice(0, -1).map((e) => Number(e.line.slice(8)))
      assert.deepEqual(
        nums,
        Array.from({ length: 232 }, (_, k) => k + 8),
      )
      assert.deepEqual(seen.at(-1), {
        ...seen.at(-1),
        stream: 'stdout',
        line: 'from the process',
        process: 'main',
      })
    } finally {
      ac.abort()
      await done
      await pl.close()
      fifo.close()
    }
  })

  it('follows a process whose log does not exist yet, with since', async () => {
    const dir = tmp()
    const ac = new AbortController()
    const seen: LogEntry[] = []
    const done = (async () => {
      for await (const e of readLogs(dir, ['late'], {
        follow: true,
        sinceMs: Date.now() - 1000,
        signal: ac.signal,
      }))
        seen.push(e)
    })()
    try {
      await new Promise((r) => setTimeout(r, 250))
      const pl = new ProcessLog({ dir, process: 'late', log: silent })
      pl.note('here')
      await pl.close()
      await until('the line', () => seen.length === 1)
      assert.equal(seen[0]?.line, 'km1s: here')
    } finally {
      ac.abort()
      await done
    }
  })

  it('ends a follow promptly on abort', async () => {
    const dir = fixture()
    const ac = new AbortController()
    const iter = readLogs(dir, ['web', 'db'], { follow: true, signal: ac.signal })
    const seen: LogEntry[] = []
    const done = (async () => {
      for await (const e of iter) seen.push(e)
    })()
    await until('the history', () => seen.length === 10)
    await new Promise((r) => setTimeout(r, 50))
    const t = performance.now()
    ac.abort()
    await done
    const ms = performance.now() - t
    assert.ok(ms < 50, `${ms} ms`)
    assert.equal(fdsOn(fs.realpathSync(join(dir, 'web.log'))), 0, 'files closed')
  })

  it('closes its files when the consumer stops early', async () => {
    const dir = fixture()
    for await (const e of readLogs(dir, ['web', 'db'], {})) {
      assert.equal(e.line, 'w0')
      break
    }
    assert.equal(fdsOn(fs.realpathSync(join(dir, 'web.log'))), 0)
  })
})
