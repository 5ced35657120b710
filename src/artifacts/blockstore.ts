// Blocks as files, one per block, named by CID (docs/artifacts.md says why files beat LevelDB for 1 MiB
// blobs). A block is written to a temporary file and renamed: a reader or a crash sees the whole block or
// none, so a failed write (quota, full disk) leaves the store as it was. Blocks are not fsync'd one by one:
// every read is checked against its CID, and a torn block is deleted and fetched again. Only a block this
// process itself wrote or checked in the last few minutes is read unchecked (a swarm serves what it just
// received; checking it again cost a second SHA-256 of every byte): a crash, torn writes and all, ends that.
import { mkdir, open, readdir, rename, rm, stat, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import { Km1sError } from '../common/errors.ts'
import { blockMatches, type CID, parseCid } from './cid.ts'

export interface BlockstoreStats {
  blocks: number
  bytes: number
  quota: number
}

export class FileBlockstore {
  readonly dir: string
  readonly #sizes = new Map<string, number>()
  /** Block → when this process last wrote or checked it. */
  readonly #checkedAt = new Map<string, number>()
  readonly #shards = new Set<string>()
  #bytes = 0
  #quota = Number.POSITIVE_INFINITY
  #tmp = 0

  constructor(dir: string) {
    this.dir = dir
  }

  /** Reads the index (names and sizes) and removes temporary files a crash left behind. */
  async open(quota: number): Promise<void> {
    this.#quota = quota
    await mkdir(this.dir, { recursive: true, mode: 0o755 })
    for (const shard of await readdir(this.dir)) {
      const shardDir = join(this.dir, shard)
      for (const name of await readdir(shardDir).catch(() => [])) {
        const path = join(shardDir, name)
        if (name.startsWith('.tmp-') || !parseCid(name)) {
          await rm(path, { force: true })
          continue
        }
        const s = await stat(path).catch(() => undefined)
        if (!s?.isFile()) continue
        this.#sizes.set(name, s.size)
        this.#bytes += s.size
      }
    }
  }

  #path(key: string): string {
    return join(this.dir, key.slice(-2), key)
  }

  has(cid: CID | string): boolean {
    return this.#sizes.has(cid.toString())
  }

  keys(): IterableIterator<string> {
    return this.#sizes.keys()
  }

  stats(): BlockstoreStats {
    return { blocks: this.#sizes.size, bytes: this.#bytes, quota: this.#quota }
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
    const size = this.#sizes.get(key)
    if (size === undefined) return undefined
    let buf: Buffer
    try {
      const fh = await open(this.#path(key), 'r')
      try {
        buf =
          into && into.length >= headroom + size
            ? into.subarray(0, headroom + size)
            : Buffer.allocUnsafe(headroom + size)
        const { bytesRead } = await fh.read(buf, headroom, size, 0)
        if (bytesRead !== size) buf = buf.subarray(0, headroom + bytesRead)
      } finally {
        await fh.close()
      }
    } catch {
      this.#forget(key)
      return undefined
    }
    if (!this.#recentlyChecked(key)) {
      if (!blockMatches(cid, buf.subarray(headroom))) {
        await this.delete(key)
        return undefined
      }
      this.#checked(key)
    }
    return buf
  }

  /** Stores a block already checked against its CID. Throws ERR_ARTIFACT_QUOTA or ERR_DISK_FULL. */
  async put(cid: CID, bytes: Uint8Array): Promise<void> {
    const key = cid.toString()
    if (this.#sizes.has(key)) return
    if (this.#bytes + bytes.length > this.#quota)
      throw new Km1sError(
        'ERR_ARTIFACT_QUOTA',
        `The artifact store is full (${mib(this.#bytes)} of its ${mib(this.#quota)} quota); run 'km1s artifacts gc' or 'km1s artifacts rm', or raise KM1S_ARTIFACTS_QUOTA.`,
      )
    const path = this.#path(key)
    const shardDir = join(this.dir, key.slice(-2))
    const tmp = join(shardDir, `.tmp-${process.pid}-${this.#tmp++}`)
    try {
      const makeShard = () => mkdir(shardDir, { recursive: true, mode: 0o755 })
      if (!this.#shards.has(shardDir)) {
        await makeShard()
        this.#shards.add(shardDir)
      }
      const fh = await open(tmp, 'w', 0o644).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err
        // The shard directory went away under us (removed by hand): make it again.
        await makeShard()
        return open(tmp, 'w', 0o644)
      })
      try {
        await fh.writeFile(bytes)
      } finally {
        await fh.close()
      }
      await rename(tmp, path)
    } catch (err) {
      await rm(tmp, { force: true })
      if ((err as NodeJS.ErrnoException).code === 'ENOSPC')
        throw new Km1sError(
          'ERR_DISK_FULL',
          `The disk holding ${this.dir} is full; free space (e.g. 'km1s artifacts gc') and try again.`,
          { cause: err },
        )
      throw err
    }
    if (!this.#sizes.has(key)) {
      this.#sizes.set(key, bytes.length)
      this.#bytes += bytes.length
    }
    this.#checked(key)
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

  async delete(key: string): Promise<number> {
    const size = this.#sizes.get(key)
    if (size === undefined) return 0
    await rm(this.#path(key), { force: true })
    this.#forget(key)
    return size
  }

  #forget(key: string): void {
    this.#checkedAt.delete(key)
    const size = this.#sizes.get(key)
    if (size === undefined) return
    this.#sizes.delete(key)
    this.#bytes -= size
  }
}

/** How long a block this process wrote or checked is read without checking it again. */
const TRUST_MS = 10 * 60_000
const MAX_TRUSTED = 20_000

const mib = (n: number) => (Number.isFinite(n) ? `${(n / 2 ** 20).toFixed(1)} MiB` : 'unlimited')

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
