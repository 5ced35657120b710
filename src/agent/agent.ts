import { readFile, rm, writeFile } from 'node:fs/promises'
import { availableParallelism, arch as osArch, totalmem } from 'node:os'
import { Level } from 'level'
import type { Handlers } from '../api/index.ts'
import { ApiServer, type NodeView, type StatusView } from '../api/index.ts'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import { dataPaths } from '../common/paths.ts'
import { KM1S_VERSION } from '../common/version.ts'
import { type DetectorConfig, Membership } from '../membership/index.ts'
import type { NodeInfo } from '../membership/messages.ts'
import { createMesh, loadOrCreateIdentity, type Mesh, readClusterSecret } from '../mesh/index.ts'
import type { PeerBookEntry } from '../mesh/peer-book.ts'
import {
  consumeTokenFile,
  DEFAULT_TOKEN_FILE,
  defaultNodeName,
  readNodeName,
  writeNodeName,
} from './setup.ts'

export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/4100']

export interface AgentConfig {
  dataDir: string
  socket: string
  name?: string
  listen: string[]
  peers: string[]
  tokenFile: string
  mdns: boolean
  detector?: Partial<DetectorConfig>
  logger: Logger
}

/** km1s names CPU architectures as Go and OCI do (amd64, arm64, armv7), not as Node does. */
export function archName(nodeArch: string = osArch()): string {
  return { x64: 'amd64', arm64: 'arm64', arm: 'armv7', ia32: '386' }[nodeArch] ?? nodeArch
}

/** The agent: opens the data directory (one agent per directory), then runs the subsystems. */
export class Agent {
  readonly config: AgentConfig
  readonly #log: Logger
  readonly #startedAt = Date.now()
  #db: Level<string, unknown> | undefined
  #mesh: Mesh | undefined
  #membership: Membership | undefined
  #api: ApiServer | undefined
  #name = ''
  #stopping: Promise<void> | undefined

  constructor(config: AgentConfig) {
    this.config = config
    this.#log = config.logger
  }

  get name(): string {
    return this.#name
  }

  async start(): Promise<void> {
    try {
      await this.#start()
    } catch (err) {
      await this.stop().catch(() => {})
      throw err
    }
  }

  async #start(): Promise<void> {
    const { dataDir } = this.config
    const paths = dataPaths(dataDir)
    this.#db = await openDatabase(paths.database, paths.pidFile, dataDir)
    await writeFile(paths.pidFile, `${process.pid}\n`)

    if (await consumeTokenFile(dataDir, this.config.tokenFile)) {
      this.#log.info(
        { tokenFile: this.config.tokenFile },
        'joined the cluster with the token file and removed it',
      )
    }
    const secret = await readClusterSecret(paths.clusterKey)
    if (!secret) {
      throw new Km1sError(
        'ERR_NO_CLUSTER',
        `This node has no cluster: run 'km1s init' (a new cluster) or 'km1s join TOKEN', or put a token in ${this.config.tokenFile}.`,
      )
    }
    this.#name = this.config.name ?? (await readNodeName(dataDir)) ?? defaultNodeName()
    await writeNodeName(dataDir, this.#name)
    const privateKey = await loadOrCreateIdentity(paths.identity)
    const logger = this.#log

    this.#mesh = await createMesh({
      privateKey,
      clusterSecret: secret,
      listen: this.config.listen,
      peers: this.config.peers,
      peerBookStore: this.#db.sublevel<string, PeerBookEntry>('peers', { valueEncoding: 'json' }),
      logger,
      mdns: this.config.mdns,
    })
    await this.#mesh.start()
    const mesh = this.#mesh
    const pubsub = mesh.libp2p.services.pubsub
    this.#membership = new Membership({
      self: mesh.peerId,
      bus: pubsub,
      connections: mesh.libp2p,
      selfInfo: () => this.#selfInfo(),
      logger,
      detector: this.config.detector,
    })
    this.#membership.start()
    this.#api = new ApiServer({ socket: this.config.socket, handlers: this.#handlers(), logger })
    await this.#api.start()
    this.#log.info(
      { name: this.#name, peer: mesh.peerId.toString(), cluster: mesh.clusterId, socket: this.config.socket },
      'agent ready',
    )
  }

  /** Stops every subsystem; safe to call twice and after a failed start. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop()
    return this.#stopping
  }

  async #stop(): Promise<void> {
    const steps: Array<[string, () => Promise<void> | void]> = [
      ['api', () => this.#api?.stop()],
      ['membership', () => this.#membership?.stop()],
      ['mesh', () => this.#mesh?.stop()],
      ['database', () => this.#db?.close()],
    ]
    for (const [what, step] of steps) {
      try {
        await step()
      } catch (err) {
        this.#log.warn({ err: errorMessage(err) }, `stopping ${what} failed`)
      }
    }
    if (this.#db) await rm(dataPaths(this.config.dataDir).pidFile, { force: true })
    this.#log.info('agent stopped')
  }

  #selfInfo(): NodeInfo {
    return {
      name: this.#name,
      arch: archName(),
      cpus: availableParallelism(),
      memory: totalmem(),
      version: KM1S_VERSION,
      addresses: (this.#mesh?.addresses() ?? []).map((a) => a.replace(/\/p2p\/[^/]+$/, '')).slice(0, 16),
      startedAt: this.#startedAt,
    }
  }

  #handlers(): Handlers {
    const mesh = this.#mesh
    const membership = this.#membership
    if (!mesh || !membership) throw new Error('subsystems not started')
    const nodes = (): NodeView[] => {
      const now = Date.now()
      return membership.members().map((m) => ({
        name: m.info.name,
        id: m.id,
        state: m.state,
        self: m.self,
        addresses: m.info.addresses,
        arch: m.info.arch,
        cpus: m.info.cpus,
        memory: m.info.memory,
        labels: {},
        version: m.info.version,
        uptime: Math.max(0, Math.round((now - m.info.startedAt) / 1000)),
        lastHeard: Math.max(0, now - m.lastHeard),
      }))
    }
    return {
      health: () => ({ ok: true, name: this.#name, id: mesh.peerId.toString(), pid: process.pid }),
      nodes,
      status: (): StatusView => {
        const counts = { alive: 0, suspect: 0, dead: 0 }
        for (const m of membership.members()) counts[m.state]++
        const mem = process.memoryUsage()
        return {
          name: this.#name,
          id: mesh.peerId.toString(),
          cluster: mesh.clusterId,
          version: KM1S_VERSION,
          pid: process.pid,
          dataDir: this.config.dataDir,
          uptime: Math.round((Date.now() - this.#startedAt) / 1000),
          addresses: mesh.addresses(),
          nodes: counts,
          mesh: mesh.stats(),
          membership: membership.stats(),
          memory: { rss: mem.rss, heapUsed: mem.heapUsed },
        }
      },
    }
  }
}

/** Opens LevelDB; its lock is what keeps a second agent off the same data directory. */
async function openDatabase(path: string, pidFile: string, dataDir: string): Promise<Level<string, unknown>> {
  // Small caches: the data set is small and a Pi has 1 GB (LevelDB's defaults take 12 MB).
  const db = new Level<string, unknown>(path, {
    valueEncoding: 'json',
    cacheSize: 1 << 20,
    writeBufferSize: 1 << 20,
  })
  try {
    await db.open()
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause
    if (cause?.code === 'LEVEL_LOCKED') {
      const pid = (await readFile(pidFile, 'utf8').catch(() => '')).trim()
      throw new Km1sError(
        'ERR_AGENT_RUNNING',
        `Another km1s agent${pid ? ` (pid ${pid})` : ''} is already running on ${dataDir}; stop it first or use another --data-dir.`,
        { cause: err },
      )
    }
    throw new Km1sError(
      'ERR_DATABASE',
      `Cannot open the database in ${path}: ${errorMessage(cause ?? err)}.`,
      { cause: err },
    )
  }
  return db
}

export { DEFAULT_TOKEN_FILE }
