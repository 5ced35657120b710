// The artifacts subsystem: push (a file or tree → chunks, a manifest, a tag record), pull (from peers, as a
// swarm), ensure (a read-only checkout for the runtime's /app), list, remove and garbage collection, and the
// serving side of the block protocol. Blocks live in DATA_DIR/artifacts/blocks, checkouts beside them.
import { chmod, mkdir, open, rename, rm, stat, symlink } from 'node:fs/promises'
import { basename, isAbsolute, join } from 'node:path'
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { errorMessage, Km1sError } from '../common/errors.ts'
import { holdHeapRoom } from '../common/heap.ts'
import type { Logger } from '../common/logger.ts'
import { ipOfAddr } from '../mesh/addresses.ts'
import type { Store } from '../state/index.ts'
import { FileBlockstore, resolveQuota } from './blockstore.ts'
import { BulkServer, type FrameChannel, lpChannel } from './bulk.ts'
import { type CID, parseCid, rawCid } from './cid.ts'
import { ELF_HEADER_BYTES, elfArch } from './elf.ts'
import { fetchArtifact, type PullProgress } from './fetch.ts'
import {
  decodeManifest,
  encodeManifest,
  type Manifest,
  type ManifestEntry,
  manifestSize,
  uniqueChunks,
} from './manifest.ts'
import {
  ANS_BLOCK,
  ANS_BULK,
  ANS_HAVE,
  ANS_NONE,
  ANS_SEED,
  BLOCKS_PROTOCOL,
  bitfield,
  decodeRequest,
  MAX_ANSWER_BYTES,
  MAX_REQUEST_BYTES,
  OP_BULK,
  OP_WANT,
} from './protocol.ts'
import { ANY_ARCH, ArchName, cidForArch, parseRef, rootsOf, TagValue, withArch, withoutArch } from './refs.ts'
import { readChunks, refuseSpecial, walkTree } from './tree.ts'

export interface ArtifactsInit {
  dataDir: string
  store: Store
  libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dial' | 'getPeers' | 'contentRouting' | 'peerId'>
  logger: Logger
  /** This node's arch (km1s names: amd64, arm64, armv7). */
  arch: string
  /** KM1S_ARTIFACTS_QUOTA: a size (2G, 500M) or a share of the disk (default 10%). */
  quota?: string
  /** TEST ONLY (KM1S_TEST_CORRUPT_BLOCKS=1): serve every block with one byte flipped. */
  corruptServedBlocks?: boolean
  /** Blocks over a fast lane beside libp2p (bulk.ts); default true. Off: only libp2p streams, both ways. */
  fastLane?: boolean
}

export interface PushResult {
  name: string
  tag: string
  arch: string
  cid: string
  size: number
  files: number
}

export interface PullResult {
  cid: string
  arch: string
  size: number
  dir: string | null
  kind: 'file' | 'dir'
  badBlocks: number
  peers: number
}

export interface ArtifactView {
  name: string
  tag: string
  arch: string
  size: number
  cid: string
  local: boolean
  pushedAt: number
}

export interface GcResult {
  removedBlocks: number
  freedBytes: number
  keptRoots: number
}

export interface ArtifactsStats {
  blocks: number
  bytes: number
  quota: number
  blocksServed: number
  bytesServed: number
  badBlocksReceived: number
  garbageRequests: number
  bannedPeers: number
  /** Fast lanes opened to this node, and connections to its lane port refused (bad ticket, none in time, too many). */
  fastLanes: number
  fastLanesRefused: number
}

export interface Progress {
  bytes: number
  total: number
  peers: number
  badBlocks: number
}

const BAN_MS = 10 * 60_000
const SEED_REST_MS = 1_500
/**
 * How long a node that has just completed a pull serves that artifact like a puller (every chunk, no rest),
 * not like a seeder: its upload is not the one to save, and the pullers still at it need its chunks now.
 */
const FRESH_PULL_MS = 60_000

export class Artifacts {
  readonly #init: ArtifactsInit
  readonly #log: Logger
  readonly #dir: string
  readonly #blocks: FileBlockstore
  #bulk: BulkServer | undefined
  readonly #controller = new AbortController()
  readonly #banned = new Map<string, number>()
  readonly #manifests = new Map<string, Manifest>()
  /** Roots being pulled or pushed, and blocks written by a push not yet tagged: gc keeps them. */
  readonly #activeRoots = new Map<string, number>()
  readonly #activeBlocks = new Set<string>()
  readonly #ensuring = new Map<string, Promise<{ cid: string; dir: string }>>()
  readonly #dhtFound = new Map<string, Set<string>>()
  /** How often each block was sent, for super-seeding (#advertised). */
  readonly #servedCount = new Map<string, number>()
  readonly #lastServed = new Map<string, number>()
  /** Chunks of artifacts this node seeds (holds whole): their WANTs follow the super-seeding offer. */
  readonly #seeding = new Set<string>()
  /** Roots this node completed a pull of, and when (FRESH_PULL_MS). */
  readonly #pulledAt = new Map<string, number>()
  #started = false
  #checkoutSeq = 0
  #stats = { blocksServed: 0, bytesServed: 0, badBlocksReceived: 0, garbageRequests: 0 }

  constructor(init: ArtifactsInit) {
    this.#init = init
    this.#log = init.logger.child({ subsystem: 'artifacts' })
    this.#dir = join(init.dataDir, 'artifacts')
    this.#blocks = new FileBlockstore(join(this.#dir, 'blocks'))
  }

  async start(): Promise<void> {
    if (this.#started) return
    await mkdir(this.#dir, { recursive: true, mode: 0o755 })
    const quota = await resolveQuota(this.#init.quota, this.#dir)
    await this.#blocks.open(quota)
    // Its listener starts at the first BULK request (bulk.ts says why).
    if (this.#init.fastLane !== false) this.#bulk = new BulkServer({ logger: this.#log })
    await this.#init.libp2p.handle(BLOCKS_PROTOCOL, (stream, conn) => this.#serve(stream, conn), {
      maxInboundStreams: 16,
    })
    this.#started = true
    if (this.#init.corruptServedBlocks)
      this.#log.warn('KM1S_TEST_CORRUPT_BLOCKS is set: this node serves corrupt blocks (for tests only)')
    this.#log.info({ ...this.#blocks.stats() }, 'artifact store open')
    // Announce what this node holds on the DHT again (provider records expire).
    void (async () => {
      for (const root of this.#referencedRoots()) if (await this.#isComplete(root)) this.#provide(root)
    })().catch(() => {})
  }

  async stop(): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#controller.abort()
    await this.#bulk?.stop()
    this.#bulk = undefined
    await this.#blocks.close()
    try {
      await this.#init.libp2p.unhandle(BLOCKS_PROTOCOL)
    } catch {
      // libp2p may already be stopping
    }
  }

  stats(): ArtifactsStats {
    const now = Date.now()
    let banned = 0
    for (const until of this.#banned.values()) if (until > now) banned++
    const lanes = this.#bulk?.stats() ?? { lanes: 0, refused: 0 }
    return {
      ...this.#blocks.stats(),
      ...this.#stats,
      bannedPeers: banned,
      fastLanes: lanes.lanes,
      fastLanesRefused: lanes.refused,
    }
  }

  // --- push ------------------------------------------------------------------------------------------

  /** Stores PATH (a file or directory on this machine) and tags it NAME:TAG for its arch. */
  async push(
    path: string,
    ref: string,
    opts: { arch?: string; signal?: AbortSignal; onProgress?: (p: Progress) => void } = {},
  ): Promise<PushResult> {
    const parsed = parseRef(ref)
    if (parsed.kind !== 'tag')
      throw new Km1sError('ERR_ARTIFACT_REF', `Push takes --name NAME:TAG, not a CID such as ${ref}.`)
    if (!isAbsolute(path))
      throw new Km1sError('ERR_ARTIFACT_PATH', `The path ${path} must be absolute (the CLI sends one).`)
    let top: Awaited<ReturnType<typeof stat>>
    try {
      top = await stat(path)
    } catch (err) {
      throw new Km1sError('ERR_ARTIFACT_PATH', `Cannot read ${path}: ${errorMessage(err)}.`, { cause: err })
    }
    refuseSpecial(path, top)
    if (opts.arch !== undefined && !ArchName.safeParse(opts.arch).success)
      throw new Km1sError(
        'ERR_ARTIFACT_ARCH',
        `'${opts.arch}' is not an arch name such as amd64, arm64 or armv7.`,
      )
    const items = top.isDirectory()
      ? await walkTree(path)
      : [{ kind: 'file' as const, path: basename(path), abs: path, mode: top.mode & 0o7777, size: top.size }]
    let arch = opts.arch
    if (!top.isDirectory()) {
      const detected = await readElfArch(path)
      if (detected && arch && detected !== arch)
        throw new Km1sError(
          'ERR_ARTIFACT_ARCH',
          `${path} is an ${detected} executable (its ELF header says so), not ${arch}; drop --arch or push the ${arch} build.`,
        )
      arch ??= detected
    }
    arch ??= ANY_ARCH
    const total = items.reduce((n, i) => n + (i.kind === 'file' ? i.size : 0), 0)
    const progress: Progress = { bytes: 0, total, peers: 0, badBlocks: 0 }
    const written: string[] = []
    const releaseHeap = holdHeapRoom()
    try {
      const entries: ManifestEntry[] = []
      for (const item of items) {
        opts.signal?.throwIfAborted()
        if (item.kind !== 'file') {
          entries.push(item)
          continue
        }
        const chunks: CID[] = []
        let size = 0
        for await (const chunk of readChunks(item.abs)) {
          const cid = rawCid(chunk)
          this.#activeBlocks.add(cid.toString())
          written.push(cid.toString())
          await this.#blocks.put(cid, chunk)
          chunks.push(cid)
          size += chunk.length
          progress.bytes += chunk.length
          opts.onProgress?.(progress)
        }
        entries.push({ path: item.path, kind: 'file', mode: item.mode, size, chunks })
      }
      const manifest: Manifest = { v: 1, kind: top.isDirectory() ? 'dir' : 'file', arch, entries }
      const { cid, bytes } = encodeManifest(manifest)
      written.push(cid.toString())
      this.#activeBlocks.add(cid.toString())
      await this.#blocks.put(cid, bytes)
      this.#manifests.set(cid.toString(), manifest)
      const size = manifestSize(manifest)
      const current = TagValue.safeParse(this.#init.store.get(parsed.key)?.value)
      const value = withArch(current.success ? current.data : undefined, arch, {
        cid: cid.toString(),
        size,
        pushedAt: Date.now(),
      })
      await this.#init.store.put(parsed.key, value, { durable: true })
      this.#provide(cid.toString())
      this.#log.info(
        { ref: `${parsed.name}:${parsed.tag}`, arch, cid: cid.toString(), size },
        'artifact pushed',
      )
      return {
        name: parsed.name,
        tag: parsed.tag,
        arch,
        cid: cid.toString(),
        size,
        files: entries.filter((e) => e.kind === 'file').length,
      }
    } finally {
      releaseHeap()
      for (const key of written) this.#activeBlocks.delete(key)
    }
  }

  // --- resolving --------------------------------------------------------------------------------------

  #tagValue(key: string): TagValue | undefined {
    const parsed = TagValue.safeParse(this.#init.store.get(key)?.value)
    return parsed.success ? parsed.data : undefined
  }

  /** The root CID `ref` names for `arch`; fails at once (from the local records) for an unknown tag. */
  resolve(ref: string, arch: string): { cid: CID; arch: string } {
    const parsed = parseRef(ref)
    if (parsed.kind === 'cid') return { cid: parsed.cid, arch: ANY_ARCH }
    const value = this.#tagValue(parsed.key)
    if (!value)
      throw new Km1sError(
        'ERR_ARTIFACT_NOT_FOUND',
        `No artifact is tagged ${parsed.name}:${parsed.tag}; 'km1s artifacts' lists the tags, 'km1s push' makes one.`,
      )
    const cid = cidForArch(value, arch)
    if (!cid)
      throw new Km1sError(
        'ERR_ARTIFACT_ARCH',
        `${parsed.name}:${parsed.tag} exists for ${Object.keys(value.arches).sort().join(', ')} but not for ${arch}; push an ${arch} build with 'km1s push PATH --name ${parsed.name}:${parsed.tag} --arch ${arch}'.`,
      )
    return { cid: parseCid(cid) as CID, arch: value.arches[arch] ? arch : ANY_ARCH }
  }

  /** The arches a ref can run on; null = any (an arch-independent artifact or an unknown bare CID). */
  arches(ref: string): string[] | null {
    let parsed: ReturnType<typeof parseRef>
    try {
      parsed = parseRef(ref)
    } catch {
      return []
    }
    if (parsed.kind === 'cid') {
      const arch = this.#manifests.get(parsed.cid.toString())?.arch
      return arch === undefined || arch === ANY_ARCH ? null : [arch]
    }
    const value = this.#tagValue(parsed.key)
    if (!value) return []
    const arches = Object.keys(value.arches).sort()
    return arches.includes(ANY_ARCH) ? null : arches
  }

  // --- pull and ensure ----------------------------------------------------------------------------------

  /** Makes `ref` complete locally (fetching what is missing from peers) and provides it; optionally checks it out. */
  async pull(
    ref: string,
    opts: {
      arch?: string
      checkout?: boolean
      signal?: AbortSignal
      onProgress?: (p: PullProgress) => void
    } = {},
  ): Promise<PullResult> {
    const { cid, arch } = this.resolve(ref, opts.arch ?? this.#init.arch)
    const key = cid.toString()
    const signal = AbortSignal.any([this.#controller.signal, ...(opts.signal ? [opts.signal] : [])])
    this.#activeRoots.set(key, (this.#activeRoots.get(key) ?? 0) + 1)
    const releaseHeap = holdHeapRoom()
    try {
      const { manifest, badBlocks, peers } = await fetchArtifact(
        {
          blocks: this.#blocks,
          candidates: (root, s, o) => this.#candidates(root, s, o),
          dial: async (peer, s) => {
            const conn = await this.#init.libp2p.dial(peerIdFromString(peer), { signal: s })
            const stream = await conn.newStream(BLOCKS_PROTOCOL, { signal: s })
            // The fast lane to this peer connects to the address its libp2p connection reached.
            return { stream, host: ipOfAddr(conn.remoteAddr) }
          },
          fastLane: this.#init.fastLane !== false,
          ban: (peer, reason) => this.#ban(peer, reason),
          isBanned: (peer) => (this.#banned.get(peer) ?? 0) > Date.now(),
          logger: this.#log,
        },
        cid,
        { signal, onProgress: opts.onProgress, label: ref },
      )
      this.#manifests.set(key, manifest)
      this.#stats.badBlocksReceived += badBlocks
      this.#provideSoon(key)
      this.#pulledAt.set(key, Date.now())
      for (const [root, at] of this.#pulledAt)
        if (Date.now() - at > FRESH_PULL_MS) this.#pulledAt.delete(root)
      const dir = opts.checkout ? await this.#checkout(cid, manifest) : null
      return {
        cid: key,
        arch: manifest.arch ?? arch,
        size: manifestSize(manifest),
        dir,
        kind: manifest.kind,
        badBlocks,
        peers: peers.length,
      }
    } finally {
      releaseHeap()
      const n = (this.#activeRoots.get(key) ?? 1) - 1
      if (n <= 0) this.#activeRoots.delete(key)
      else this.#activeRoots.set(key, n)
    }
  }

  /** For the runtime: a read-only directory of `ref`'s files for `arch`, pulled if needed (contract). */
  async ensure(
    ref: string,
    arch: string,
    opts: { signal?: AbortSignal } = {},
  ): Promise<{ cid: string; dir: string }> {
    const { cid } = this.resolve(ref, arch)
    const key = cid.toString()
    const dir = this.#checkoutDir(key)
    if (await exists(dir)) return { cid: key, dir }
    let running = this.#ensuring.get(key)
    if (!running) {
      running = this.pull(key, { checkout: true, signal: opts.signal }).then((r) => ({
        cid: key,
        dir: r.dir as string,
      }))
      this.#ensuring.set(key, running)
      running.finally(() => this.#ensuring.delete(key)).catch(() => {})
    }
    return running
  }

  #checkoutDir(cid: string): string {
    return join(this.#dir, 'checkout', cid)
  }

  /** Writes the files of a complete artifact into checkout/<cid>, read-only, atomically (a rename). */
  async #checkout(cid: CID, manifest: Manifest): Promise<string> {
    const dir = this.#checkoutDir(cid.toString())
    if (await exists(dir)) return dir
    const tmp = `${dir}.tmp-${process.pid}-${this.#checkoutSeq++}`
    await rm(tmp, { recursive: true, force: true })
    await mkdir(tmp, { recursive: true, mode: 0o755 })
    try {
      for (const e of manifest.entries) {
        const target = join(tmp, e.path)
        await mkdir(join(target, '..'), { recursive: true, mode: 0o755 })
        if (e.kind === 'dir') await mkdir(target, { recursive: true, mode: 0o755 })
        else if (e.kind === 'symlink') await symlink(e.target, target)
        else {
          const fh = await open(target, 'wx', 0o644)
          try {
            for (const c of e.chunks) {
              const bytes = await this.#blocks.get(c)
              if (!bytes)
                throw new Km1sError(
                  'ERR_ARTIFACT_INCOMPLETE',
                  `A chunk of ${cid} is missing or damaged on this node; pull it again.`,
                )
              await fh.write(bytes)
            }
          } finally {
            await fh.close()
          }
          // Read-only (the runtime also binds it read-only); no setuid/setgid from a peer's manifest.
          await chmod(target, e.mode & 0o555)
        }
      }
      await rename(tmp, dir)
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      if (await exists(dir)) return dir
      throw err
    }
    return dir
  }

  // --- listing, removing, gc ---------------------------------------------------------------------------

  async list(): Promise<ArtifactView[]> {
    const out: ArtifactView[] = []
    for (const r of this.#init.store.list('tag/')) {
      const parsed = TagValue.safeParse(r.value)
      if (!parsed.success) continue
      const [name = '', tag = ''] = r.key.slice('tag/'.length).split(':')
      for (const [arch, a] of Object.entries(parsed.data.arches).sort(([x], [y]) => (x < y ? -1 : 1)))
        out.push({
          name,
          tag,
          arch,
          size: a.size,
          cid: a.cid,
          local: await this.#isComplete(a.cid),
          pushedAt: a.pushedAt,
        })
    }
    return out
  }

  /** `km1s artifacts rm`: a tag (all its arches, or one) from the cluster, or a root CID's local copy. */
  async remove(ref: string, arch?: string): Promise<GcResult & { removedTags: number }> {
    const parsed = parseRef(ref)
    if (parsed.kind === 'cid') return { ...(await this.gc({ drop: parsed.cid.toString() })), removedTags: 0 }
    const value = this.#tagValue(parsed.key)
    if (!value)
      throw new Km1sError(
        'ERR_ARTIFACT_NOT_FOUND',
        `No artifact is tagged ${parsed.name}:${parsed.tag}; 'km1s artifacts' lists them.`,
      )
    if (arch !== undefined && !value.arches[arch])
      throw new Km1sError(
        'ERR_ARTIFACT_ARCH',
        `${parsed.name}:${parsed.tag} has no ${arch} build; it has ${Object.keys(value.arches).join(', ')}.`,
      )
    const next = arch === undefined ? undefined : withoutArch(value, arch)
    if (next) await this.#init.store.put(parsed.key, next, { durable: true })
    else await this.#init.store.delete(parsed.key, { durable: true })
    return { ...(await this.gc()), removedTags: 1 }
  }

  /** Root CIDs something refers to: tags (every arch) and workloads' `artifact` fields. */
  #referencedRoots(): Set<string> {
    const roots = new Set<string>()
    const tagValue = (key: string) => this.#tagValue(key)
    for (const r of this.#init.store.list('tag/'))
      for (const c of rootsOf(r.key.slice(4), tagValue)) roots.add(c)
    for (const r of this.#init.store.list('workload/')) {
      const artifact = (r.value as { artifact?: unknown } | null)?.artifact
      if (typeof artifact === 'string') for (const c of rootsOf(artifact, tagValue)) roots.add(c)
    }
    return roots
  }

  /** Removes every block and checkout no tag, workload or pull in flight refers to. */
  async gc(opts: { drop?: string } = {}): Promise<GcResult> {
    const roots = this.#referencedRoots()
    for (const r of this.#activeRoots.keys()) roots.add(r)
    if (opts.drop) roots.delete(opts.drop)
    const keep = new Set<string>(this.#activeBlocks)
    for (const root of roots) {
      keep.add(root)
      const m = await this.#manifestOf(root)
      if (m) for (const c of uniqueChunks(m)) keep.add(c.toString())
    }
    let removedBlocks = 0
    let freedBytes = 0
    for (const key of [...this.#blocks.keys()]) {
      if (keep.has(key)) continue
      freedBytes += await this.#blocks.delete(key)
      removedBlocks++
      this.#manifests.delete(key)
    }
    // Deleted blocks are dead space in their packs until the live ones are moved out (blockstore.ts).
    await this.#blocks.compact()
    const checkouts = join(this.#dir, 'checkout')
    const { readdir } = await import('node:fs/promises')
    for (const name of await readdir(checkouts).catch(() => [] as string[])) {
      if (roots.has(name) || this.#ensuring.has(name)) continue
      await rm(join(checkouts, name), { recursive: true, force: true })
    }
    this.#log.info({ removedBlocks, freedBytes, keptRoots: roots.size }, 'artifact gc')
    return { removedBlocks, freedBytes, keptRoots: roots.size }
  }

  async #manifestOf(root: string): Promise<Manifest | undefined> {
    const cached = this.#manifests.get(root)
    if (cached) return cached
    const cid = parseCid(root)
    if (!cid) return undefined
    const bytes = await this.#blocks.get(cid)
    const m = bytes ? decodeManifest(bytes) : undefined
    if (m) {
      if (this.#manifests.size > 256) this.#manifests.clear()
      this.#manifests.set(root, m)
    }
    return m
  }

  async #isComplete(root: string): Promise<boolean> {
    if (!this.#blocks.has(root)) return false
    const m = await this.#manifestOf(root)
    return m !== undefined && uniqueChunks(m).every((c) => this.#blocks.has(c))
  }

  // --- the exchange ---------------------------------------------------------------------------------

  #provide(root: string): void {
    const cid = parseCid(root)
    if (!cid || !this.#started) return
    const signal = AbortSignal.any([this.#controller.signal, AbortSignal.timeout(30_000)])
    this.#init.libp2p.contentRouting.provide(cid, { signal }).catch((err) => {
      this.#log.debug({ root, err: errorMessage(err) }, 'providing on the DHT failed')
    })
  }

  /**
   * Provides a root just pulled a moment later, at a random point of the next few seconds: nodes that pull
   * together finish together, and their DHT announcements (a lookup each, answered by every peer) would
   * otherwise land on the swarm's last seconds. The connected peers ask this node directly meanwhile.
   */
  #provideSoon(root: string): void {
    // #provide does nothing once the agent stops, and the timer holds no stopping agent up.
    setTimeout(() => this.#provide(root), 2_000 + Math.random() * 3_000).unref()
  }

  #ban(peer: string, reason: string): void {
    this.#banned.set(peer, Date.now() + BAN_MS)
    this.#log.warn({ peer, reason }, 'peer banned for 10 minutes: it sent a corrupt block')
  }

  /**
   * Who may hold `root`: connected peers (they answer HAVE), the node that wrote its tag record, nodes
   * running a workload of it (status records) and providers on the DHT (looked up in the background, remembered for the next round).
   */
  async #candidates(root: CID, signal: AbortSignal, opts: { dht: boolean }): Promise<string[]> {
    const self = this.#init.libp2p.peerId.toString()
    const key = root.toString()
    const out = new Set<string>(this.#init.libp2p.getPeers().map((p) => p.toString()))
    const tagValue = (k: string) => this.#tagValue(k)
    // A tag record is signed by the node that pushed: it holds the root unless it collected it since.
    for (const r of this.#init.store.list('tag/'))
      if (rootsOf(r.key.slice('tag/'.length), tagValue).includes(key)) out.add(r.author)
    for (const r of this.#init.store.list('status/')) {
      const workload = (r.value as { workload?: unknown } | null)?.workload
      if (typeof workload !== 'string') continue
      const artifact = (this.#init.store.get(`workload/${workload}`)?.value as { artifact?: unknown } | null)
        ?.artifact
      if (typeof artifact === 'string' && rootsOf(artifact, tagValue).includes(key))
        out.add(r.key.split('/')[1] ?? '')
    }
    let found = this.#dhtFound.get(key)
    if (!found && opts.dht) {
      found = new Set()
      this.#dhtFound.set(key, found)
      const into = found
      void (async () => {
        const s = AbortSignal.any([signal, AbortSignal.timeout(5_000)])
        for await (const p of this.#init.libp2p.contentRouting.findProviders(root, { signal: s }))
          into.add(p.id.toString())
      })()
        .catch(() => {})
        .finally(() => setTimeout(() => this.#dhtFound.delete(key), 30_000).unref())
    }
    for (const p of found ?? []) out.add(p)
    out.delete(self)
    out.delete('')
    return [...out]
  }

  /**
   * What a HAVE answer shows. A node holding the whole artifact shows only the chunks it has sent least
   * often (BitTorrent's super-seeding): pullers that start together then take different chunks from it and
   * the rest from each other, so its upload stays near one copy however many pull. Once every chunk went
   * out equally often, it shows them all again, so a lone puller or a straggler is never stuck. A node that
   * completed its own pull of the root a moment ago shows everything, like a puller (FRESH_PULL_MS).
   */
  #advertised(root: string, chunks: CID[]): { offered: boolean[]; seed: boolean } {
    const held = chunks.map((c) => this.#blocks.has(c))
    const fresh = Date.now() - (this.#pulledAt.get(root) ?? 0) < FRESH_PULL_MS
    if (fresh || !held.every(Boolean)) return { offered: held, seed: false }
    if (this.#servedCount.size > 100_000) {
      this.#servedCount.clear()
      this.#lastServed.clear()
      this.#seeding.clear()
    }
    const counts = chunks.map((c) => this.#servedCount.get(c.toString()) ?? 0)
    const least = Math.min(...counts)
    const now = Date.now()
    return {
      offered: chunks.map((c, i) => {
        this.#seeding.add(c.toString())
        return (counts[i] ?? 0) <= least && this.#restedSince(c.toString(), now)
      }),
      seed: true,
    }
  }

  /**
   * A chunk this node just sent is not sent again for a moment: the puller that got it will offer it to
   * the others as soon as its next HAVE answer goes out, and they should take it from there.
   */
  #restedSince(key: string, now: number): boolean {
    return now - (this.#lastServed.get(key) ?? 0) > SEED_REST_MS
  }

  /** Whether a WANT is served: always, but for a seeded chunk sent a moment ago (then: not here, ask again). */
  #offeredNow(key: string): boolean {
    return !this.#seeding.has(key) || this.#restedSince(key, Date.now())
  }

  /** The serving side of a libp2p block stream. */
  async #serve(stream: Stream, conn: Connection): Promise<void> {
    await this.#serveFrames(lpChannel(stream, MAX_REQUEST_BYTES), conn.remotePeer.toString())
  }

  /**
   * Answers WANT, HAVE and BULK in order until the puller closes the channel: a libp2p stream, or a fast lane
   * this node offered on one (then the same loop runs on both, and the puller uses the lane).
   */
  async #serveFrames(ch: FrameChannel, peer: string): Promise<void> {
    const signal = this.#controller.signal
    // A lane seals each frame as it is written, so one buffer serves every block read for it.
    const scratch = ch.kind === 'bulk' ? Buffer.allocUnsafe(MAX_ANSWER_BYTES) : undefined
    // Held while the puller is connected: serving a swarm promotes objects as fast as pulling does.
    const releaseHeap = holdHeapRoom()
    try {
      for (;;) {
        let raw: Uint8Array
        try {
          raw = await ch.read(signal)
        } catch (err) {
          if (/Length/.test((err as Error).name)) this.#stats.garbageRequests++
          throw err
        }
        const req = decodeRequest(raw)
        if (!req) {
          this.#stats.garbageRequests++
          throw new Km1sError('ERR_BLOCKS_PROTOCOL', `peer ${peer} sent a request that is not one`)
        }
        if (req.op === OP_BULK) {
          const offer =
            ch.kind === 'libp2p'
              ? await this.#bulk?.offer(MAX_REQUEST_BYTES, (lane) => void this.#serveFrames(lane, peer))
              : undefined
          await ch.write(
            offer ? Buffer.concat([Uint8Array.of(ANS_BULK), offer]) : Uint8Array.of(ANS_NONE),
            signal,
          )
        } else if (req.op === OP_WANT) {
          const frame = this.#offeredNow(req.cid.toString())
            ? await this.#blocks.getWithHeadroom(req.cid, 1, scratch)
            : undefined
          if (!frame) {
            await ch.write(Uint8Array.of(ANS_NONE), signal)
            continue
          }
          frame[0] = ANS_BLOCK
          if (this.#init.corruptServedBlocks && frame.length > 1) frame[1] = (frame[1] ?? 0) ^ 0xff
          await ch.write(frame, signal)
          this.#stats.blocksServed++
          const key = req.cid.toString()
          this.#servedCount.set(key, (this.#servedCount.get(key) ?? 0) + 1)
          this.#lastServed.set(key, Date.now())
          this.#stats.bytesServed += frame.length - 1
        } else {
          const m = await this.#manifestOf(req.cid.toString())
          if (!m) {
            // A node pulling this root right now holds chunks within moments: it answers HAVE with nothing
            // yet, so the asker keeps it and asks again, instead of dropping it for seconds (late starters
            // of a swarm waited ~2 s for a seeder resting its chunks while their neighbours had them).
            const pulling = this.#activeRoots.has(req.cid.toString())
            await ch.write(Uint8Array.of(pulling ? ANS_HAVE : ANS_NONE), signal)
            continue
          }
          const { offered, seed } = this.#advertised(req.cid.toString(), uniqueChunks(m))
          await ch.write(
            Buffer.concat([Uint8Array.of(seed ? ANS_SEED : ANS_HAVE), bitfield(offered)]),
            signal,
          )
        }
      }
    } catch (err) {
      ch.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      releaseHeap()
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

async function readElfArch(path: string): Promise<string | undefined> {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.alloc(ELF_HEADER_BYTES)
    const { bytesRead } = await fh.read(buf, 0, ELF_HEADER_BYTES, 0)
    return elfArch(buf.subarray(0, bytesRead))
  } finally {
    await fh.close()
  }
}
