// The logs of container processes. A process's stdout and stderr are FIFOs that its shim holds open
// read-write, so the process never dies of EPIPE while no agent reads them: it blocks once the 64 KiB pipe
// buffer is full, and the next agent reads on where the last one stopped. The agent stamps each line with
// the time it read it and appends it, in the Kubernetes CRI log format, to bounded files rotated by rename.
import { execFile } from 'node:child_process'
import * as fs from 'node:fs'
import { type FileHandle, open as openFile, readdir, stat } from 'node:fs/promises'
import net from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import * as z from '../common/schema.ts'
import type { LogEntry, LogQuery } from './types.ts'
import { ProcessName } from './types.ts'

const execFileP = promisify(execFile)

export type LogStream = 'stdout' | 'stderr'

/** The longest line content kept in one record; longer lines become `P` records (as kubelet does). */
export const MAX_LINE_BYTES = 16 * 1024
/** How long a line without its newline waits for the rest before it is written as a partial record. */
export const PARTIAL_FLUSH_MS = 1000
/** How often a follower looks for new lines. */
export const FOLLOW_POLL_MS = 200
const MiB = 1024 * 1024

// ---------------------------------------------------------------------------------------------------------
// FIFOs

/** Makes a FIFO (mode 0600) at `path`; nothing when one is there already. Throws when something else is. */
export async function makeFifo(path: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const st = await fs.promises.lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined
      throw err
    })
    if (st?.isFIFO()) return
    if (st) {
      throw new Km1sError('ERR_NOT_A_FIFO', `${path} exists and is not a FIFO; remove it and try again.`)
    }
    try {
      // Node has no mkfifo(3). `-m` sets the mode regardless of the umask.
      await execFileP('mkfifo', ['-m', '0600', '--', path])
      return
    } catch (err) {
      // Someone else made it in between: look again, once.
      if (attempt === 0 && fs.existsSync(path)) continue
      const why = (err as { stderr?: string }).stderr?.trim() || errorMessage(err)
      throw new Km1sError('ERR_MKFIFO', `Cannot make the FIFO ${path}: ${why}.`, { cause: err })
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The CRI log format: `2016-10-06T00:17:09.669794202Z stdout F text`

export interface CriRecord {
  /** UTC, always nine fractional digits: comparable as strings. */
  time: string
  /** Milliseconds since the epoch (the fraction below a millisecond dropped). */
  ms: number
  stream: LogStream
  partial: boolean
  text: string
}

const NS_PER_S = 1_000_000_000n

function isoSeconds(epochSeconds: number): string {
  const iso = new Date(epochSeconds * 1000).toISOString()
  if (iso.length !== 24) throw new RangeError('log times must lie within the years 0000 to 9999')
  return iso.slice(0, 19)
}

/** `ms` since the epoch plus `subMsNs` (0..999999) nanoseconds, as a CRI time. */
function criTime(ms: number, subMsNs: number): string {
  const sec = Math.floor(ms / 1000)
  const frac = (ms - sec * 1000) * 1_000_000 + subMsNs
  return `${isoSeconds(sec)}.${String(frac).padStart(9, '0')}Z`
}

/** A time as a CRI time: a Date, or nanoseconds since the epoch. */
export function formatCriTime(time: Date | bigint): string {
  if (typeof time !== 'bigint') return criTime(time.getTime(), 0)
  let sec = time / NS_PER_S
  let frac = time % NS_PER_S
  if (frac < 0n) {
    frac += NS_PER_S
    sec -= 1n
  }
  return `${isoSeconds(Number(sec))}.${frac.toString().padStart(9, '0')}Z`
}

/**
 * One record of the CRI log format, without the newline. `text` is one line: a newline in it becomes a
 * space. `time` is a Date or nanoseconds since the epoch, within the years 0000–9999 (else RangeError).
 */
export function formatCriLine(
  time: Date | bigint,
  stream: LogStream,
  partial: boolean,
  text: string,
): string {
  const line = text.includes('\n') ? text.replaceAll('\n', ' ') : text
  return `${formatCriTime(time)} ${stream} ${partial ? 'P' : 'F'} ${line}`
}

// The tag may carry more tags after a colon (the CRI format allows it); only the first one means anything.
const CRI_LINE =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2}) (stdout|stderr) ([PF])(?::[^ ]*)?(?: (.*))?$/s

/** One CRI record (a trailing newline is ignored), or undefined for anything else. Never throws. */
export function parseCriLine(line: string): CriRecord | undefined {
  const text = line.endsWith('\n') ? line.slice(0, -1) : line
  const m = CRI_LINE.exec(text)
  if (m === null) return undefined
  const [, y, mo, d, h, mi, s, fraction = '', zone, stream, tag, content = ''] = m as unknown as string[]
  const month = Number(mo)
  const day = Number(d)
  const hour = Number(h)
  const minute = Number(mi)
  const second = Number(s)
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) return undefined
  const date = new Date(0)
  date.setUTCFullYear(Number(y), month - 1, day)
  if (date.getUTCDate() !== day) return undefined // 31 April, 29 February 2023
  let offsetMin = 0
  if (zone !== 'Z') {
    const oh = Number(zone?.slice(1, 3))
    const om = Number(zone?.slice(4, 6))
    if (oh > 23 || om > 59) return undefined
    offsetMin = (zone?.startsWith('-') ? -1 : 1) * (oh * 60 + om)
  }
  const frac9 = fraction.padEnd(9, '0')
  const sec = date.getTime() / 1000 + hour * 3600 + minute * 60 + second - offsetMin * 60
  let time: string
  if (fraction.length === 9 && zone === 'Z') {
    time = text.slice(0, 30)
  } else {
    const iso = new Date(sec * 1000).toISOString()
    if (iso.length !== 24) return undefined
    time = `${iso.slice(0, 19)}.${frac9}Z`
  }
  return {
    time,
    ms: sec * 1000 + Number(frac9.slice(0, 3)),
    stream: stream as LogStream,
    partial: tag === 'P',
    text: content,
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing

/** The file system calls ProcessLog makes for its files; tests replace them to make them fail. */
export type LogFs = Pick<
  typeof fs,
  | 'openSync'
  | 'writeSync'
  | 'closeSync'
  | 'renameSync'
  | 'unlinkSync'
  | 'fstatSync'
  | 'mkdirSync'
  | 'readdirSync'
>

export interface ProcessLogOptions {
  /** The container's log directory (made when missing). */
  dir: string
  process: string
  /** The size at which the current file is rotated. Default 1 MiB, at least 4 KiB. */
  maxBytes?: number
  /** Files in total, the current one included. Default 2. */
  files?: number
  log: Logger
  /** Default PARTIAL_FLUSH_MS; tests shorten it. */
  partialFlushMs?: number
  fs?: LogFs
}

const Options = z.object({
  dir: z.string().check(z.regex(/^\//, 'must be an absolute path')),
  process: ProcessName,
  maxBytes: z._default(z.number().check(z.int(), z.minimum(4096, 'must be at least 4096')), MiB),
  files: z._default(z.number().check(z.int(), z.minimum(1), z.maximum(100)), 2),
  partialFlushMs: z._default(z.number().check(z.int(), z.minimum(1)), PARTIAL_FLUSH_MS),
})

export interface ProcessLogStats {
  /** Records written. */
  lines: number
  bytes: number
  /** Records lost to errors of the log files (the process's output is read and dropped). */
  droppedLines: number
  /** Failed file system calls. */
  errors: number
  rotations: number
}

interface Reader {
  stream: LogStream
  socket: net.Socket
  /** The start of a line whose newline has not come yet (less than MAX_LINE_BYTES). */
  pending: Buffer[]
  pendingLen: number
  timer: NodeJS.Timeout | undefined
  closed: Promise<void>
}

interface Piece {
  stream: LogStream
  partial: boolean
  content: Buffer
}

// Records are put together in one buffer shared by every ProcessLog (writes are synchronous), without an
// allocation per line: at 40 MB/s of output that garbage grew the heap by ~60 MB and tripled the CPU time.
const HEAD_BYTES = 40 // '2016-10-06T00:17:09.669794202Z stdout F '
const TAGS = {
  stdout: [Buffer.from(' stdout F '), Buffer.from(' stdout P ')],
  stderr: [Buffer.from(' stderr F '), Buffer.from(' stderr P ')],
} as const
const scratch = Buffer.allocUnsafe(256 * 1024)
let cachedSecond = Number.NaN
let cachedSecondText = ''

/** Writes the 30 bytes of a CRI time at `off`. */
function putTime(buf: Buffer, off: number, ms: number, subMsNs: number): void {
  const sec = Math.floor(ms / 1000)
  if (sec !== cachedSecond) {
    cachedSecondText = isoSeconds(sec)
    cachedSecond = sec
  }
  buf.write(cachedSecondText, off, 'latin1')
  buf[off + 19] = 0x2e
  let frac = (ms - sec * 1000) * 1_000_000 + subMsNs
  for (let i = off + 28; i >= off + 20; i--) {
    buf[i] = 0x30 + (frac % 10)
    frac = Math.floor(frac / 10)
  }
  buf[off + 29] = 0x5a
}
const WARN_AGAIN_MS = 60_000

function unlessMissing(fn: () => void): void {
  try {
    fn()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}

/** Where to cut `buf` at most `max` bytes in so that no UTF-8 character is split (when `buf` is UTF-8). */
export function utf8Cut(buf: Uint8Array, max: number): number {
  if (buf.length <= max) return buf.length
  for (let i = max; i > max - 4 && i > 0; i--) if (((buf[i] as number) & 0xc0) !== 0x80) return i
  return max
}

/** How many bytes at the end of `buf` are the start of a UTF-8 character whose rest has not come yet. */
function incompleteUtf8Tail(buf: Uint8Array): number {
  for (let back = 1; back <= Math.min(3, buf.length); back++) {
    const b = buf[buf.length - back] as number
    if ((b & 0xc0) === 0x80) continue
    const need = b >= 0xf0 && b <= 0xf7 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1
    return need > back && b >= 0xc0 ? back : 0
  }
  return 0
}

/**
 * The log of one process: `<dir>/<process>.log`, rotated to `<process>.log.1` … so that at most `files`
 * files of at most `maxBytes` each exist (a file is bigger only when one record alone is). Lines are read
 * from the process's FIFOs (`attach`) and written synchronously with one descriptor kept open: an append
 * to the page cache, and it keeps the order of lines without a queue. Errors of the log files never reach
 * the caller: they are counted, logged once, and the lines are dropped.
 */
export class ProcessLog {
  readonly path: string
  readonly #dir: string
  readonly #process: string
  readonly #maxBytes: number
  readonly #files: number
  readonly #flushMs: number
  readonly #log: Logger
  readonly #fs: LogFs
  readonly #readers = new Map<LogStream, Reader>()
  #fd: number | undefined
  #size = 0
  #prepared = false
  #closed = false
  #lastMs = 0
  #seq = 0
  #failing = false
  #warnedAt = Number.NEGATIVE_INFINITY
  readonly #stats: ProcessLogStats = { lines: 0, bytes: 0, droppedLines: 0, errors: 0, rotations: 0 }

  constructor(opts: ProcessLogOptions) {
    const parsed = Options.safeParse(opts)
    if (!parsed.success) {
      const issue = parsed.error.issues[0]
      throw new Km1sError(
        'ERR_INVALID_LOG_OPTIONS',
        `Invalid log options: ${issue?.path.join('.') || 'options'}: ${issue?.message ?? 'is invalid'}.`,
      )
    }
    const o = parsed.data
    this.#dir = o.dir
    this.#process = o.process
    this.#maxBytes = o.maxBytes
    this.#files = o.files
    this.#flushMs = o.partialFlushMs
    this.#log = opts.log
    this.#fs = opts.fs ?? fs
    this.path = join(o.dir, `${o.process}.log`)
  }

  get stats(): ProcessLogStats {
    return { ...this.#stats }
  }

  /**
   * Reads one output FIFO of the process from now on (replacing an earlier one of the same stream).
   * Opened read-write and non-blocking: the open never waits for a writer, and the read side never sees
   * EOF when the process ends or a writer goes away.
   */
  attach(stream: LogStream, fifoPath: string): void {
    if (this.#closed) throw new Error(`the log of ${this.#process} is closed`)
    void this.#detach(stream)
    let fd: number
    try {
      // libuv adds O_CLOEXEC: the processes the agent spawns do not inherit the read side.
      fd = fs.openSync(fifoPath, fs.constants.O_RDWR | fs.constants.O_NONBLOCK)
    } catch (err) {
      throw new Km1sError(
        'ERR_LOG_FIFO',
        `Cannot open the ${stream} FIFO ${fifoPath} of process ${this.#process}: ${errorMessage(err)}.`,
        { cause: err },
      )
    }
    if (!fs.fstatSync(fd).isFIFO()) {
      fs.closeSync(fd)
      throw new Km1sError('ERR_NOT_A_FIFO', `${fifoPath} is not a FIFO; remove it and try again.`)
    }
    // A socket over the fd, not an fs stream: an fs stream blocks one libuv threadpool thread per FIFO.
    const socket = new net.Socket({ fd, readable: true, writable: false })
    const reader: Reader = {
      stream,
      socket,
      pending: [],
      pendingLen: 0,
      timer: undefined,
      closed: new Promise((resolve) => socket.once('close', () => resolve())),
    }
    socket.on('data', (chunk: Buffer) => this.#onData(reader, chunk))
    socket.on('error', (err) => {
      this.#log.warn({ process: this.#process, stream, err: errorMessage(err) }, 'cannot read process output')
    })
    this.#readers.set(stream, reader)
  }

  /** Writes a line of km1s itself (stderr, prefixed `km1s: `), after what the process wrote before. */
  note(text: string): void {
    if (this.#closed) return
    for (const r of this.#readers.values()) this.#flushPending(r, true)
    const body = text.startsWith('km1s: ') ? text : `km1s: ${text}`
    const pieces: Piece[] = []
    for (const line of body.split('\n')) this.#cutLine(pieces, 'stderr', Buffer.from(line), false)
    this.#write(pieces)
  }

  /** Stops reading (closing the FIFO descriptors), writes what is pending, closes the file. */
  async close(): Promise<void> {
    if (this.#closed) return
    const waits = [...this.#readers.keys()].map((s) => this.#detach(s))
    this.#closed = true
    await Promise.all(waits)
    this.#closeFd()
  }

  #detach(stream: LogStream): Promise<void> {
    const r = this.#readers.get(stream)
    if (r === undefined) return Promise.resolve()
    this.#readers.delete(stream)
    r.socket.destroy()
    // Destroyed, the socket emits no more data; what the kernel still holds stays in the pipe.
    this.#flushPending(r, true)
    return r.closed
  }

  #onData(r: Reader, chunk: Buffer): void {
    const pieces: Piece[] = []
    let start = 0
    for (;;) {
      const nl = chunk.indexOf(10, start)
      if (nl === -1) break
      let line = chunk.subarray(start, nl)
      if (r.pendingLen > 0) {
        line = Buffer.concat([...r.pending, line])
        r.pending = []
        r.pendingLen = 0
      }
      this.#cutLine(pieces, r.stream, line, false)
      start = nl + 1
    }
    if (start < chunk.length) {
      // Copied: a slice would keep the whole chunk alive.
      const rest = Buffer.from(chunk.subarray(start))
      r.pending.push(rest)
      r.pendingLen += rest.length
      if (r.pendingLen >= MAX_LINE_BYTES) {
        let buf = Buffer.concat(r.pending)
        while (buf.length >= MAX_LINE_BYTES) {
          const cut = utf8Cut(buf, MAX_LINE_BYTES)
          pieces.push({ stream: r.stream, partial: true, content: buf.subarray(0, cut) })
          buf = buf.subarray(cut)
        }
        r.pending = buf.length > 0 ? [Buffer.from(buf)] : []
        r.pendingLen = buf.length
      }
    }
    this.#write(pieces)
    this.#armTimer(r)
  }

  #armTimer(r: Reader): void {
    if (r.pendingLen === 0) {
      clearTimeout(r.timer)
      r.timer = undefined
    } else if (r.timer === undefined) {
      // From the moment the line started, not the last byte: a progress bar that never ends its line
      // still shows up every second.
      r.timer = setTimeout(() => {
        r.timer = undefined
        this.#flushPending(r, false)
        this.#armTimer(r)
      }, this.#flushMs)
      r.timer.unref()
    }
  }

  /** Writes the pending start of a line as a partial record; keeps a split UTF-8 character unless `all`. */
  #flushPending(r: Reader, all: boolean): void {
    if (r.pendingLen === 0) return
    const buf = Buffer.concat(r.pending)
    const tail = all ? 0 : incompleteUtf8Tail(buf)
    const keep = tail === buf.length ? 0 : tail
    r.pending = keep > 0 ? [Buffer.from(buf.subarray(buf.length - keep))] : []
    r.pendingLen = keep
    this.#write([{ stream: r.stream, partial: true, content: buf.subarray(0, buf.length - keep) }])
    if (all) {
      clearTimeout(r.timer)
      r.timer = undefined
    }
  }

  #cutLine(out: Piece[], stream: LogStream, line: Buffer, partial: boolean): void {
    let rest = line
    while (rest.length > MAX_LINE_BYTES) {
      const cut = utf8Cut(rest, MAX_LINE_BYTES)
      out.push({ stream, partial: true, content: rest.subarray(0, cut) })
      rest = rest.subarray(cut)
    }
    out.push({ stream, partial, content: rest })
  }

  /** Milliseconds of the wall clock; the digits below them count the lines of that millisecond. */
  #stamp(): void {
    const ms = Date.now()
    if (ms !== this.#lastMs) {
      this.#lastMs = ms
      this.#seq = 0
    } else if (this.#seq < 999_999) {
      this.#seq++
    }
  }

  #write(pieces: Piece[]): void {
    if (pieces.length === 0 || this.#closed) return
    let len = 0
    let lines = 0
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i] as Piece
      const size = HEAD_BYTES + p.content.length + 1
      if (!this.#ensureOpen()) {
        this.#stats.droppedLines += pieces.length - i
        return
      }
      if (this.#size + len + size > this.#maxBytes && this.#size + len > 0) {
        this.#append(len, lines)
        len = 0
        lines = 0
        // Without a rotation the bound would break: drop instead, and try again with the next line.
        if (!this.#rotate() || !this.#ensureOpen()) {
          this.#stats.droppedLines += pieces.length - i
          return
        }
      } else if (len + size > scratch.length) {
        this.#append(len, lines)
        len = 0
        lines = 0
      }
      this.#stamp()
      putTime(scratch, len, this.#lastMs, this.#seq)
      TAGS[p.stream][p.partial ? 1 : 0].copy(scratch, len + 30)
      p.content.copy(scratch, len + HEAD_BYTES)
      scratch[len + size - 1] = 10
      len += size
      lines++
    }
    this.#append(len, lines)
  }

  /** Writes the first `len` bytes of the scratch buffer. */
  #append(len: number, lines: number): void {
    if (lines === 0) return
    if (this.#fd === undefined) {
      this.#stats.droppedLines += lines
      return
    }
    let off = 0
    try {
      while (off < len) off += this.#fs.writeSync(this.#fd, scratch, off, len - off)
    } catch (err) {
      this.#stats.droppedLines += lines
      this.#fail(err, 'write')
      // Reopened (and its size read again) at the next line: after an ENOSPC, part of the batch may be in.
      this.#closeFd()
      return
    }
    this.#size += len
    this.#stats.bytes += len
    this.#stats.lines += lines
    this.#recovered()
  }

  #ensureOpen(): boolean {
    if (this.#fd !== undefined) return true
    try {
      if (!this.#prepared) {
        this.#fs.mkdirSync(this.#dir, { recursive: true, mode: 0o700 })
        this.#removeSurplus()
        this.#prepared = true
      }
      this.#fd = this.#fs.openSync(
        this.path,
        fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT,
        0o600,
      )
      this.#size = this.#fs.fstatSync(this.#fd).size
      return true
    } catch (err) {
      this.#fail(err, 'open')
      return false
    }
  }

  /** Rotated files beyond `files`, left by an earlier configuration, would break the bound. */
  #removeSurplus(): void {
    const prefix = `${this.#process}.log.`
    for (const name of this.#fs.readdirSync(this.#dir)) {
      if (!name.startsWith(prefix)) continue
      const n = Number(name.slice(prefix.length))
      if (Number.isInteger(n) && n >= this.#files) this.#fs.unlinkSync(join(this.#dir, name))
    }
  }

  /** Closes the current file first, then renames: a follower seeing the rename knows the file is complete. */
  #rotate(): boolean {
    this.#closeFd()
    this.#size = 0
    try {
      for (let i = this.#files - 1; i >= 1; i--) {
        const from = i === 1 ? this.path : `${this.path}.${i - 1}`
        unlessMissing(() => this.#fs.renameSync(from, `${this.path}.${i}`))
      }
      if (this.#files === 1) unlessMissing(() => this.#fs.unlinkSync(this.path))
      this.#stats.rotations++
      return true
    } catch (err) {
      this.#fail(err, 'rotate')
      return false
    }
  }

  #closeFd(): void {
    if (this.#fd === undefined) return
    const fd = this.#fd
    this.#fd = undefined
    try {
      this.#fs.closeSync(fd)
    } catch (err) {
      this.#fail(err, 'close')
    }
  }

  #fail(err: unknown, what: string): void {
    this.#stats.errors++
    const now = Date.now()
    if (!this.#failing || now - this.#warnedAt >= WARN_AGAIN_MS) {
      this.#warnedAt = now
      this.#log.warn(
        { process: this.#process, file: this.path, err: errorMessage(err) },
        `cannot ${what} the log of a process; its lines are dropped until this works again`,
      )
    }
    this.#failing = true
  }

  #recovered(): void {
    if (!this.#failing) return
    this.#failing = false
    this.#log.info(
      { process: this.#process, file: this.path, droppedLines: this.#stats.droppedLines },
      'writing the log of a process again',
    )
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reading

const READ_CHUNK = 64 * 1024
/** A line longer than any record km1s writes is garbage: dropped rather than held. */
const MAX_RECORD_BYTES = MAX_LINE_BYTES * 4 + 256
/** Per process and poll while following, so that one chatty process cannot fill memory. */
const FOLLOW_BATCH = 10_000
const SNAPSHOT_ATTEMPTS = 20

interface OpenFile {
  fh: FileHandle
  ino: number
  pos: number
  /** The bytes after the last newline read. */
  rest: Buffer | undefined
}

/**
 * Reads the files of one process in order, oldest first, following the rotations of a concurrent writer:
 * an opened file is an inode, whatever its name becomes.
 */
class Cursor {
  readonly process: string
  readonly #dir: string
  readonly #path: string
  /** Oldest first; only the last may still grow. */
  #files: OpenFile[] = []
  #queue: CriRecord[] = []
  #q = 0
  readonly #buf = Buffer.allocUnsafe(READ_CHUNK)

  constructor(dir: string, process: string) {
    this.process = process
    this.#dir = dir
    this.#path = join(dir, `${process}.log`)
  }

  async open(): Promise<void> {
    this.#files = await this.#snapshot()
  }

  /** The next record there is now, or undefined at the end of the newest file. */
  async next(): Promise<CriRecord | undefined> {
    for (;;) {
      if (this.#q < this.#queue.length) return this.#queue[this.#q++]
      this.#queue = []
      this.#q = 0
      const f = this.#files[0]
      if (f === undefined) return undefined
      const more = await this.#read(f)
      if (more) continue
      if (this.#files.length === 1) return undefined
      this.#finish(f)
      this.#files.shift()
      await f.fh.close().catch(() => {})
    }
  }

  /**
   * At the end of the newest file: whether the writer has rotated it away (or made the first one), and if
   * so, the files written after it. The writer closes a file before renaming it, so once the rename shows,
   * reading it to its end gives all it will ever hold.
   */
  async refresh(): Promise<void> {
    const cur = this.#files[this.#files.length - 1]
    if (cur === undefined) {
      this.#files = await this.#snapshot()
      return
    }
    const st = await stat(this.#path).catch(() => undefined)
    if (st?.ino === cur.ino) {
      if (st.size < cur.pos) {
        cur.pos = 0 // truncated by someone
        cur.rest = undefined
      }
      return
    }
    const newer = await this.#snapshot()
    const at = newer.findIndex((f) => f.ino === cur.ino)
    const successors = at === -1 ? newer : newer.slice(at + 1)
    for (const f of at === -1 ? [] : newer.slice(0, at + 1)) await f.fh.close().catch(() => {})
    this.#files.push(...successors)
  }

  async close(): Promise<void> {
    const files = this.#files
    this.#files = []
    await Promise.all(files.map((f) => f.fh.close().catch(() => {})))
  }

  /**
   * Opens every file of the process, oldest first, as they were at one moment. A rotation renames every
   * file, and an inode held open keeps its number: so when, after all are open, each name still leads to
   * the inode opened under it, no rotation happened in between. A name missing between two present ones is
   * a rotation half done (the listing too may be one): try again. A writer that rotates faster than all
   * this (thousands of lines a second into 4 KiB files) gets only its current file read.
   */
  async #snapshot(): Promise<OpenFile[]> {
    const prefix = `${this.process}.log.`
    for (let attempt = 0; ; attempt++) {
      let last = 0
      if (attempt < SNAPSHOT_ATTEMPTS) {
        for (const name of await readdir(this.#dir).catch(() => [] as string[])) {
          const index = name.startsWith(prefix) ? Number(name.slice(prefix.length)) : Number.NaN
          if (Number.isInteger(index) && index > last) last = index
        }
      }
      const paths = Array.from({ length: last + 1 }, (_, i) => (i === 0 ? this.#path : `${this.#path}.${i}`))
      const opened = await Promise.all(
        paths.map(async (path) => {
          const fh = await openFile(path, 'r').catch(() => undefined)
          if (fh === undefined) return undefined
          const st = await fh.stat().catch(() => undefined)
          return { path, file: { fh, ino: st?.ino ?? -1, pos: 0, rest: undefined } as OpenFile }
        }),
      )
      const gap = opened.indexOf(undefined)
      const present = opened.filter((o) => o !== undefined)
      const now = await Promise.all(present.map((o) => stat(o.path).catch(() => undefined)))
      const consistent =
        (gap === -1 || present.length === gap) &&
        new Set(present.map((o) => o.file.ino)).size === present.length &&
        present.every((o, i) => o.file.ino !== -1 && now[i]?.ino === o.file.ino)
      if (consistent || attempt >= SNAPSHOT_ATTEMPTS) return present.map((o) => o.file).reverse()
      await Promise.all(present.map((o) => o.file.fh.close().catch(() => {})))
    }
  }

  /** Reads one chunk into the queue; false at the end of the file. */
  async #read(f: OpenFile): Promise<boolean> {
    const { bytesRead } = await f.fh.read(this.#buf, 0, READ_CHUNK, f.pos)
    if (bytesRead === 0) return false
    f.pos += bytesRead
    const data = f.rest ? Buffer.concat([f.rest, this.#buf.subarray(0, bytesRead)]) : this.#buf
    const end = f.rest ? data.length : bytesRead
    let start = 0
    for (;;) {
      const nl = data.indexOf(10, start)
      if (nl === -1 || nl >= end) break
      const rec = parseCriLine(data.toString('utf8', start, nl))
      if (rec) this.#queue.push(rec)
      start = nl + 1
    }
    f.rest =
      start < end && end - start <= MAX_RECORD_BYTES ? Buffer.from(data.subarray(start, end)) : undefined
    return true
  }

  /** A finished file's last line without its newline (a write cut short): kept if it parses. */
  #finish(f: OpenFile): void {
    if (f.rest === undefined) return
    const rec = parseCriLine(f.rest.toString('utf8'))
    f.rest = undefined
    if (rec) this.#queue.push(rec)
  }
}

function entry(process: string, rec: CriRecord): LogEntry {
  return { time: rec.time, process, stream: rec.stream, line: rec.text }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}

/**
 * The log entries of the given processes of one container (or of `query.process` only), oldest first,
 * merged by time, at or after `query.sinceMs`, the last `query.tail` of them; then, with `follow`, new
 * entries as they are written (polled every FOLLOW_POLL_MS, across rotations) until `query.signal` aborts.
 * Lines that are not CRI records are skipped. Each partial record is an entry of its own.
 */
export async function* readLogs(dir: string, processes: string[], query: LogQuery): AsyncGenerator<LogEntry> {
  const signal = query.signal
  const since = query.sinceMs ?? Number.NEGATIVE_INFINITY
  const names = query.process === undefined ? processes : processes.filter((p) => p === query.process)
  const cursors = names.map((p) => new Cursor(dir, p))
  try {
    await Promise.all(cursors.map((c) => c.open()))
    const tail = query.tail !== undefined && Number.isFinite(query.tail) ? Math.max(0, query.tail) : undefined
    const ring: LogEntry[] = []
    let count = 0
    // A k-way merge: the files of one process are in order already.
    const heads = await Promise.all(cursors.map((c) => c.next()))
    for (;;) {
      if (signal?.aborted) return
      let best = -1
      for (let i = 0; i < heads.length; i++) {
        const h = heads[i]
        if (h !== undefined && (best === -1 || h.time < (heads[best] as CriRecord).time)) best = i
      }
      if (best === -1) break
      const rec = heads[best] as CriRecord
      heads[best] = await (cursors[best] as Cursor).next()
      if (rec.ms < since) continue
      const e = entry(names[best] as string, rec)
      if (tail === undefined) {
        yield e
      } else if (tail > 0) {
        ring[count % tail] = e
        count++
      }
    }
    if (tail !== undefined && tail > 0) {
      const n = Math.min(count, tail)
      for (let i = count - n; i < count; i++) yield ring[i % tail] as LogEntry
    }
    if (!query.follow) return
    while (!signal?.aborted) {
      const batch: Array<{ rec: CriRecord; i: number }> = []
      let full = false
      for (let i = 0; i < cursors.length; i++) {
        const c = cursors[i] as Cursor
        let n = 0
        for (let round = 0; round < 2 && n < FOLLOW_BATCH; round++) {
          if (round === 1) await c.refresh()
          for (let rec = await c.next(); rec !== undefined; rec = await c.next()) {
            batch.push({ rec, i })
            if (++n >= FOLLOW_BATCH) break
          }
        }
        if (n >= FOLLOW_BATCH) full = true
      }
      batch.sort((a, b) => (a.rec.time < b.rec.time ? -1 : a.rec.time > b.rec.time ? 1 : a.i - b.i))
      for (const { rec, i } of batch) {
        if (signal?.aborted) return
        if (rec.ms >= since) yield entry(names[i] as string, rec)
      }
      if (!full) await sleep(FOLLOW_POLL_MS, signal)
    }
  } finally {
    await Promise.all(cursors.map((c) => c.close()))
  }
}

// ---------------------------------------------------------------------------------------------------------
// Settings

/**
 * Where the container logs go: `/run/km1s/logs` as root when `/run` exists — RAM-backed on nearly every
 * Linux (tmpfs), because SD cards wear out — else `<dataDir>/logs`. A flag of the agent will put them on disk.
 */
export function defaultLogRoot(
  dataDir: string,
  uid: number = process.getuid?.() ?? -1,
  exists: (path: string) => boolean = fs.existsSync,
): string {
  if (uid === 0 && exists('/run')) return '/run/km1s/logs'
  return join(dataDir, 'logs')
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const DURATION = /^(?:\d{1,9}[smhd])+$/
const ISO_TIME =
  /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?$/

/**
 * A `--since` value as milliseconds since the epoch: a duration before `now` (`10s`, `5m`, `2h`, `1d`,
 * also `1h30m`), or an ISO time (`2024-05-01`, `2024-05-01T12:00`, `…:00Z`, `…+02:00`; local time when
 * it has no zone).
 */
export function parseSince(text: string, now: number): number {
  const t = text.trim()
  if (DURATION.test(t)) {
    let ms = 0
    for (const m of t.matchAll(/(\d+)([smhd])/g)) ms += Number(m[1]) * (UNIT_MS[m[2] as string] as number)
    return now - ms
  }
  const m = ISO_TIME.exec(t)
  if (m !== null) {
    const [, y, mo, d, h = '0', mi = '0', s = '0', frac = '', zone] = m as unknown as string[]
    const f = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const
    const ms = Number(frac.padEnd(3, '0').slice(0, 3))
    const date = new Date(0)
    if (zone === undefined) {
      date.setFullYear(f[0], f[1], f[2])
      date.setHours(f[3], f[4], f[5], ms)
    } else {
      date.setUTCFullYear(f[0], f[1], f[2])
      date.setUTCHours(f[3], f[4], f[5], ms)
    }
    const local = zone === undefined
    const valid =
      (local ? date.getMonth() : date.getUTCMonth()) === f[1] &&
      (local ? date.getDate() : date.getUTCDate()) === f[2] &&
      f[3] <= 23 &&
      f[4] <= 59 &&
      f[5] <= 59
    if (valid) {
      if (zone === undefined || zone === 'Z') return date.getTime()
      const digits = zone.replace(':', '')
      const oh = Number(digits.slice(1, 3))
      const om = Number(digits.slice(3, 5))
      if (oh <= 23 && om <= 59)
        return date.getTime() - (zone.startsWith('-') ? -1 : 1) * (oh * 60 + om) * 60_000
    }
  }
  throw new Km1sError(
    'ERR_INVALID_SINCE',
    `Invalid --since value "${text}": give a duration such as 10s, 5m, 2h or 1d, or an ISO time such as 2024-05-01T12:00:00Z.`,
  )
}
