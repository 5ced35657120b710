// Blocks in pack files: the blocks a node receives or pushes are appended to one open pack
// (`packs/<n>.pack`, a new one per agent start and every 256 MiB), and each block's place goes in the
// pack's index (`packs/<n>.idx`), appended after its bytes are written. docs/artifacts.md says why:
//
// - A file per block cost an inode per MiB: a create (and often a shard directory) and a rename per block
//   received, an open and a close per block sent, each a trip through the threadpool. On this machine's
//   ext4 a create after many deletions cost ~1 ms of kernel CPU, more than writing the MiB itself, and on an
//   SD card every create is metadata written. A pack keeps one descriptor open for reading and writing.
// - Blocks are not fsync'd one by one: every read is checked against its CID, and a torn or damaged block
//   is forgotten (its index gets a delete) and fetched again. Only a block this process itself wrote or
//   checked in the last few minutes is read unchecked (a swarm serves what it just received; checking it
//   again cost a second SHA-256 of every byte): a crash, torn writes and all, ends that trust.
// - Deleting a block appends a delete to its pack's index; compact() (gc) moves the live blocks of packs
//   with dead space into the open pack and removes the old ones, so the disk gets its space back.
// - Stores written before packs (`<last 2 chars>/<cid>`, a file per block) are still read and deleted;
//   new blocks go to packs.
import { constants } from 'node:fs'
import { type FileHandle, mkdir, open, readdir, readFile, rm, stat, statfs, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { Km1sError } from '../common/errors.ts'
import { blockMatches, type CID, parseCid } from './cid.ts'

export interface BlockstoreStats {
  blocks: number
  /** Bytes of the blocks held. */
  bytes: number
  quota: number
}

/** A pack grows to this size before the next one is started. */
export const PACK_BYTES = 256 * 2 ** 20

const OP_PUT = 1
const OP_DEL = 2

/** One pack file and its index, with the descriptors this process holds open. */
class Pack {
  readonly n: number
  readonly path: string
  readonly idxPath: string
  /** Bytes reserved so far (the offset of the next block); an existing pack's file size when opened. */
  size = 0
  /** Bytes of blocks deleted or never indexed (a failed write). */
  dead = 0
  fh: Promise<FileHandle> | undefined
  idx: Promise<FileHandle> | undefined
  /** Reads and writes in flight: the descriptors are closed after the last one once the pack is gone. */
  busy = 0
  gone = false

  constructor(dir: string, n: number) {
    this.n = n
    this.path = join(dir, `${n}.pack`)
    this.idxPath = join(dir, `${n}.idx`)
  }

  /**
   * The pack's descriptor, opened once however many ask at the same moment; only the writer creates the
   * file (a removed pack is never made again).
   */
  handle(create = false): Promise<FileHandle> {
    if (this.gone && !this.fh) return Promise.reject(new Error('the pack was compacted away'))
    if (!this.fh) {
      const opening = open(this.path, constants.O_RDWR | (create ? constants.O_CREAT : 0), 0o644)
      this.fh = opening
      opening.catch(() => {
        if (this.fh === opening) this.fh = undefined
      })
    }
    return this.fh
  }

  async appendIndex(record: Uint8Array): Promise<void> {
    if (this.gone) return
    if (!this.idx) {
      const opening = open(this.idxPath, 'a', 0o644)
      this.idx = opening
      opening.catch(() => {
        if (this.idx === opening) this.idx = undefined
      })
    }
    await (await this.idx).write(record)
  }

  /** Closes both descriptors; reads and writes after it open them again. */
  async close(): Promise<void> {
    const handles = [this.fh, this.idx]
    this.fh = undefined
    this.idx = undefined
    for (const h of handles) await h?.then((fh) => fh.close()).catch(() => {})
  }

  closeIfIdle(): void {
    if (this.gone && this.busy === 0) void this.close()
  }
}

type Place = { pack: Pack; offset: number; size: number } | { file: string; size: number }

export class FileBlockstore {
  readonly dir: string
  readonly #packDir: string
  readonly #places = new Map<string, Place>()
  readonly #packs = new Map<number, Pack>()
  /** Block → when this process last wrote or checked it. */
  readonly #checkedAt = new Map<string, number>()
  #writer: Pack | undefined
  /** Bytes of the blocks held. */
  #bytes = 0
  /** Bytes on disk: packs (dead space included, until compact) and old-layout files. */
  #disk = 0
  #quota = Number.POSITIVE_INFINITY
  #nextPack = 1

  constructor(dir: string) {
    this.dir = dir
    this.#packDir = join(dir, 'packs')
  }

  /** Reads the packs' indexes (and the old layout's file names), repairing what a crash left behind. */
  async open(quota: number): Promise<void> {
    this.#quota = quota
    await mkdir(this.#packDir, { recursive: true, mode: 0o755 })
    for (const name of await readdir(this.dir)) {
      if (name === 'packs') continue
      await this.#openOldShard(join(this.dir, name))
    }
    const numbers = (await readdir(this.#packDir))
      .map((name) => /^(\d+)\.pack$/.exec(name)?.[1])
      .filter((n): n is string => n !== undefined)
      .map(Number)
      .sort((a, b) => a - b)
    for (const n of numbers) await this.#openPack(n)
    this.#nextPack = (numbers.at(-1) ?? 0) + 1
    // Indexes whose pack is gone (a crash between removing the two) go too.
    for (const name of await readdir(this.#packDir)) {
      const n = /^(\d+)\.idx$/.exec(name)?.[1]
      if (n !== undefined && !this.#packs.has(Number(n))) await rm(join(this.#packDir, name), { force: true })
    }
  }

  async #openOldShard(shardDir: string): Promise<void> {
    for (const name of await readdir(shardDir).catch(() => [])) {
      const path = join(shardDir, name)
      if (name.startsWith('.tmp-') || !parseCid(name)) {
        await rm(path, { force: true })
        continue
      }
      const s = await stat(path).catch(() => undefined)
      if (!s?.isFile() || this.#places.has(name)) continue
      this.#places.set(name, { file: path, size: s.size })
      this.#bytes += s.size
      this.#disk += s.size
    }
  }

  async #openPack(n: number): Promise<void> {
    const pack = new Pack(this.#packDir, n)
    pack.size = (await stat(pack.path)).size
    const size = pack.size
    const idx = await readFile(pack.idxPath).catch(() => Buffer.alloc(0))
    const { records, whole } = readIndex(idx)
    // A torn last record (a crash while appending) is cut off, so later deletes append after whole ones.
    if (whole < idx.length) await truncate(pack.idxPath, whole)
    const live = new Map<string, { offset: number; size: number }>()
    for (const r of records) {
      if (r.op === OP_DEL) live.delete(r.key)
      else if (r.offset + r.size <= size) live.set(r.key, { offset: r.offset, size: r.size })
    }
    let held = 0
    for (const [key, at] of live) {
      // A block in two packs (a crash while compacting): the first copy counts, the other is dead space.
      if (this.#places.has(key)) continue
      this.#places.set(key, { pack, ...at })
      this.#bytes += at.size
      held += at.size
    }
    pack.dead = size - held
    this.#disk += size
    this.#packs.set(n, pack)
    if (held === 0) await this.#removePack(pack)
  }

  /** Closes the packs' descriptors (the agent is stopping); reads and writes after it reopen them. */
  async close(): Promise<void> {
    for (const pack of this.#packs.values()) await pack.close()
    this.#writer = undefined
  }

  keys(): IterableIterator<string> {
    return this.#places.keys()
  }

  stats(): BlockstoreStats {
    return { blocks: this.#places.size, bytes: this.#bytes, quota: this.#quota }
  }

  has(cid: CID | string): boolean {
    return this.#places.has(cid.toString())
  }

  /** The block's bytes after checking them against the CID; a block that fails the check is removed. */
  async get(cid: CID): Promise<Uint8Array | undefined> {
    return (await this.getWithHeadroom(cid, 0))?.subarray(0)
  }

  /**
   * The block read into a buffer `headroom` bytes into it (the first bytes left for a frame header, so a
   * provider sends it without copying a MiB), checked against the CID like get(). With `into` (large enough)
   * the block is read into that buffer instead of a new one: a sender that is done with it before the next
   * read (the fast lane's write resolves once TLS has taken it) reuses one buffer for every block.
   */
  async getWithHeadroom(cid: CID, headroom: number, into?: Buffer): Promise<Buffer | undefined> {
    const key = cid.toString()
    // Twice at most: compact() may move the block while it is read.
    for (let attempt = 0; attempt < 2; attempt++) {
      const place = this.#places.get(key)
      if (place === undefined) return undefined
      const buf =
        into && into.length >= headroom + place.size
          ? into.subarray(0, headroom + place.size)
          : Buffer.allocUnsafe(headroom + place.size)
      const bytesRead = await this.#read(place, buf, headroom).catch(() => -1)
      if (this.#places.get(key) !== place) continue
      const whole = bytesRead === place.size
      if (!whole || (!this.#recentlyChecked(key) && !blockMatches(cid, buf.subarray(headroom)))) {
        await this.delete(key)
        return undefined
      }
      this.#checked(key)
      return buf
    }
    return undefined
  }

  async #read(place: Place, buf: Buffer, at: number): Promise<number> {
    if ('file' in place) {
      const fh = await open(place.file, 'r')
      try {
        return (await fh.read(buf, at, place.size, 0)).bytesRead
      } finally {
        await fh.close()
      }
    }
    const pack = place.pack
    pack.busy++
    try {
      const fh = await pack.handle()
      return (await fh.read(buf, at, place.size, place.offset)).bytesRead
    } finally {
      pack.busy--
      pack.closeIfIdle()
    }
  }

  /** Stores a block already checked against its CID. Throws ERR_ARTIFACT_QUOTA or ERR_DISK_FULL. */
  async put(cid: CID, bytes: Uint8Array): Promise<void> {
    const key = cid.toString()
    if (this.#places.has(key)) return
    if (this.#disk + bytes.length > this.#quota)
      throw new Km1sError(
        'ERR_ARTIFACT_QUOTA',
        `The artifact store is full (${mib(this.#disk)} of its ${mib(this.#quota)} quota); run 'km1s artifacts gc' or 'km1s artifacts rm', or raise KM1S_ARTIFACTS_QUOTA.`,
      )
    await this.#append(key, bytes)
    this.#checked(key)
  }

  /** Writes `bytes` at the end of the open pack, then its index record; the block counts once both are in. */
  async #append(key: string, bytes: Uint8Array): Promise<void> {
    const pack = await this.#packFor(bytes.length)
    const offset = pack.size
    pack.size += bytes.length
    this.#disk += bytes.length
    pack.busy++
    try {
      const fh = await pack.handle(true)
      let done = 0
      while (done < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, offset + done)
        done += bytesWritten
      }
      await pack.appendIndex(putRecord(key, offset, bytes.length))
    } catch (err) {
      pack.dead += bytes.length
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOSPC' || code === 'EDQUOT')
        throw new Km1sError(
          'ERR_DISK_FULL',
          `The disk holding ${this.dir} is full; free space (e.g. 'km1s artifacts gc') and try again.`,
          { cause: err },
        )
      throw err
    } finally {
      pack.busy--
      pack.closeIfIdle()
    }
    // compact() removed the pack while this block was written into it: write it again, to the open pack.
    if (pack.gone) return this.#append(key, bytes)
    if (this.#places.has(key)) {
      // Another put of the same block finished first (two pulls at once): this copy is dead space.
      pack.dead += bytes.length
      return
    }
    this.#places.set(key, { pack, offset, size: bytes.length })
    this.#bytes += bytes.length
  }

  /** The pack new blocks go to: a fresh one at the first write of this process and after PACK_BYTES. */
  async #packFor(length: number): Promise<Pack> {
    const current = this.#writer
    if (current && !current.gone && (current.size + length <= PACK_BYTES || current.size === 0))
      return current
    const n = this.#nextPack++
    const pack = new Pack(this.#packDir, n)
    this.#packs.set(n, pack)
    this.#writer = pack
    try {
      await pack.handle(true)
    } catch (err) {
      this.#packs.delete(n)
      this.#writer = undefined
      throw err
    }
    return pack
  }

  /** Forgets a block; its bytes are dead space until compact(). Returns the block's size (0 if not held). */
  async delete(key: string): Promise<number> {
    const place = this.#places.get(key)
    if (place === undefined) return 0
    this.#places.delete(key)
    this.#checkedAt.delete(key)
    this.#bytes -= place.size
    if ('file' in place) {
      await rm(place.file, { force: true })
      this.#disk -= place.size
      return place.size
    }
    place.pack.dead += place.size
    // Best effort: if the delete record is lost, the block is back after a restart, whole or checked away.
    await place.pack.appendIndex(delRecord(key)).catch(() => {})
    return place.size
  }

  /**
   * Gives deleted blocks' space back: packs that hold only dead space are removed; the live blocks of packs
   * with dead space are copied to the open pack first. Returns the bytes the disk got back.
   */
  async compact(): Promise<number> {
    const before = this.#disk
    // The open pack too (a push past the quota, a pull gc'd away): new blocks go to the next pack from now.
    if (this.#writer && this.#writer.dead > 0) this.#writer = undefined
    for (const pack of [...this.#packs.values()]) {
      // A pack still being written (a pull or push in flight) waits for the next gc.
      if (pack.gone || pack.dead === 0 || pack === this.#writer || pack.busy > 0) continue
      for (const [key, place] of [...this.#places]) {
        if (!('pack' in place) || place.pack !== pack) continue
        const buf = Buffer.allocUnsafe(place.size)
        const read = await this.#read(place, buf, 0).catch(() => -1)
        if (this.#places.get(key) !== place) continue
        this.#places.delete(key)
        this.#bytes -= place.size
        // An unreadable block is dropped; its pull fetches it again.
        if (read === place.size) await this.#append(key, buf)
      }
      await this.#removePack(pack)
    }
    return before - this.#disk
  }

  async #removePack(pack: Pack): Promise<void> {
    // Two gcs at once may both reach the same pack.
    if (pack.gone) return
    pack.gone = true
    this.#packs.delete(pack.n)
    if (this.#writer === pack) this.#writer = undefined
    this.#disk -= pack.size
    // The index first: an index without its pack is removed at the next open, a pack without one is empty.
    await rm(pack.idxPath, { force: true })
    await rm(pack.path, { force: true })
    pack.closeIfIdle()
  }

  #recentlyChecked(key: string): boolean {
    return Date.now() - (this.#checkedAt.get(key) ?? 0) < TRUST_MS
  }

  #checked(key: string): void {
    // Bounded: a long-lived agent forgets the oldest first (Map keeps insertion order).
    this.#checkedAt.delete(key)
    this.#checkedAt.set(key, Date.now())
    if (this.#checkedAt.size > MAX_TRUSTED) {
      const oldest = this.#checkedAt.keys().next().value
      if (oldest !== undefined) this.#checkedAt.delete(oldest)
    }
  }
}

/** How long a block this process wrote or checked is read without checking it again. */
const TRUST_MS = 10 * 60_000
const MAX_TRUSTED = 20_000

const mib = (n: number) => (Number.isFinite(n) ? `${(n / 2 ** 20).toFixed(1)} MiB` : 'unlimited')

// --- the index format: records appended one after the other ---------------------------------------------
//   put: [1][key length: u8][key: ASCII CID][offset: u32 LE][size: u32 LE]
//   del: [2][key length: u8][key]

export type IndexRecord = { op: 1; key: string; offset: number; size: number } | { op: 2; key: string }

export function putRecord(key: string, offset: number, size: number): Buffer {
  const k = Buffer.from(key, 'latin1')
  const out = Buffer.allocUnsafe(2 + k.length + 8)
  out[0] = OP_PUT
  out[1] = k.length
  k.copy(out, 2)
  out.writeUInt32LE(offset, 2 + k.length)
  out.writeUInt32LE(size, 6 + k.length)
  return out
}

export function delRecord(key: string): Buffer {
  const k = Buffer.from(key, 'latin1')
  return Buffer.concat([Uint8Array.of(OP_DEL, k.length), k])
}

/**
 * The records of an index, up to the first one that is torn or not a record (`whole`: the bytes they take).
 * Garbage (a record whose key is no CID) ends the index there, like a torn tail.
 */
export function readIndex(bytes: Uint8Array): { records: IndexRecord[]; whole: number } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const records: IndexRecord[] = []
  let at = 0
  while (at + 2 <= buf.length) {
    const op = buf[at]
    const len = buf[at + 1] ?? 0
    const end = at + 2 + len + (op === OP_PUT ? 8 : 0)
    if ((op !== OP_PUT && op !== OP_DEL) || end > buf.length) break
    const key = buf.toString('latin1', at + 2, at + 2 + len)
    if (!parseCid(key)) break
    if (op === OP_PUT)
      records.push({
        op: OP_PUT,
        key,
        offset: buf.readUInt32LE(at + 2 + len),
        size: buf.readUInt32LE(at + 6 + len),
      })
    else records.push({ op: OP_DEL, key })
    at = end
  }
  return { records, whole: at }
}

/**
 * The quota in bytes from its setting: a byte count with an optional k/M/G suffix, or a share of the disk
 * holding `dir` such as `10%` (the default).
 */
export async function resolveQuota(setting: string | undefined, dir: string): Promise<number> {
  const text = (setting ?? '10%').trim()
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(text)
  if (pct) {
    const fs = await statfs(dir)
    return Math.floor((fs.blocks * fs.bsize * Number(pct[1])) / 100)
  }
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?$/.exec(text)
  if (!m)
    throw new Km1sError(
      'ERR_ARTIFACT_QUOTA_SETTING',
      `The artifact quota '${text}' is neither a size such as 2G or 500M nor a share of the disk such as 10%.`,
    )
  const unit = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 }[(m[2] ?? '').toLowerCase()] ?? 1
  return Math.floor(Number(m[1]) * unit)
}
