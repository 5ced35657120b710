import { readFile, rm, writeFile } from 'node:fs/promises'
import { availableParallelism, arch as osArch, totalmem } from 'node:os'
import { Level } from 'level'
import { ApiServer } from '../api/index.ts'
import { Artifacts } from '../artifacts/index.ts'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import { dataPaths } from '../common/paths.ts'
import { KM1S_VERSION } from '../common/version.ts'
import { DnsService, type Upstream } from '../dns/index.ts'
import { type DetectorConfig, Membership } from '../membership/index.ts'
import { createMesh, loadOrCreateIdentity, type Mesh, readClusterSecret } from '../mesh/index.ts'
import type { PeerBookEntry } from '../mesh/peer-book.ts'
import { bridgeAddress, NodeNetwork } from '../network/index.ts'
import { Remote } from '../remote/index.ts'
import { createRuntime, instanceId, type Runtime, type RuntimeChoice } from '../runtime/index.ts'
import { Scheduler } from '../scheduler/index.ts'
import { HealthMonitor, SERVICE_CIDR, Services, serviceEndpoints } from '../services/index.ts'
import { type NodeValue, Replication, Store, type WireRecord, type WorkloadValue } from '../state/index.ts'
import { createHandlers } from './handlers.ts'
import { consumeTokenFile, defaultNodeName, isDatabaseLocked, readNodeName, writeNodeName } from './setup.ts'

export interface AgentConfig {
  dataDir: string
  socket: string
  name?: string
  listen: string[]
  peers: string[]
  tokenFile: string
  mdns: boolean
  detector?: Partial<DetectorConfig>
  /** Dead nodes leave `km1s nodes` after this long. */
  forgetAfterMs?: number
  /** Which container runtime: auto (oci where it works, else process), oci, process or none. */
  runtime?: RuntimeChoice
  /** Volatile runtime state (default /run/km1s as root, else DATA_DIR/run). */
  runDir?: string
  /** Container logs (default /run/km1s/logs as root: RAM, because SD cards wear; else DATA_DIR/logs). */
  logDir?: string
  /** This node's container subnet, fixed (--subnet); by default the node claims a /24 of clusterCidr. */
  subnet?: string
  /** The DNS server's port (53); null runs none. */
  dnsPort?: number | null
  /** Where other names go; undefined: the host's /etc/resolv.conf. */
  dnsUpstreams?: Upstream[]
  /** The cluster's container range (default 10.42.0.0/16). */
  clusterCidr?: string
  /** WireGuard's UDP port (default 51820). */
  wgPort?: number
  /** The node network and overlay; default: on for the oci runtime (auto or oci) as root. */
  network?: boolean
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
  #store: Store | undefined
  #replication: Replication | undefined
  #membership: Membership | undefined
  #api: ApiServer | undefined
  #runtime: Runtime | undefined
  #dns: DnsService | undefined
  #remote: Remote | undefined
  #network: NodeNetwork | undefined
  #scheduler: Scheduler | undefined
  #artifacts: Artifacts | undefined
  #services: Services | undefined
  #health: HealthMonitor | undefined
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
    const db = this.#db

    this.#store = new Store({
      records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
      meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
      privateKey,
      logger,
    })
    await this.#store.load()
    const store = this.#store

    this.#mesh = await createMesh({
      privateKey,
      clusterSecret: secret,
      listen: this.config.listen,
      peers: this.config.peers,
      peerBookStore: db.sublevel<string, PeerBookEntry>('peers', { valueEncoding: 'json' }),
      logger,
      mdns: this.config.mdns,
    })
    await this.#mesh.start()
    const mesh = this.#mesh
    const pubsub = mesh.libp2p.services.pubsub
    this.#replication = new Replication({
      store,
      libp2p: mesh.libp2p,
      pubsub,
      logger,
      // Membership starts below; until it has, every round runs.
      inSync: (peer) => this.#membership?.inSyncWith(peer) ?? false,
    })
    await this.#replication.start()
    // The key goes into the node record, which membership writes as it starts.
    if (this.#networkWanted()) {
      this.#network = new NodeNetwork({
        store,
        nodes: { members: () => this.#membership?.members() ?? [] },
        instance: instanceId(mesh.peerId.toString()),
        dataDir,
        clusterCidr: this.config.clusterCidr,
        fixedSubnet: this.config.subnet,
        wgPort: this.config.wgPort,
        waitForSync: () => this.#waitForFirstSync(),
        log: logger,
        // Services with a virtual IP, to their serving replicas: the table's DNAT chains.
        serviceCidr: SERVICE_CIDR,
        services: () =>
          serviceEndpoints([...store.list('service/'), ...store.list('status/')]).flatMap((s) =>
            s.ip === null ? [] : [{ name: s.name, ip: s.ip, ports: s.ports, endpoints: s.endpoints }],
          ),
      })
      await this.#network.prepare()
    }
    this.#membership = new Membership({
      self: mesh.peerId,
      bus: pubsub,
      connections: mesh.libp2p,
      store,
      selfInfo: () => this.#selfInfo(),
      logger,
      detector: this.config.detector,
      forgetAfterMs: this.config.forgetAfterMs,
    })
    await this.#membership.start()
    await this.#network?.start()
    this.#runtime = await createRuntime({
      choice: this.config.runtime ?? 'auto',
      peerId: mesh.peerId.toString(),
      dataDir,
      runDir: this.config.runDir,
      logDir: this.config.logDir,
      subnet: this.#network?.subnet ?? this.config.subnet,
      logger,
    })
    await this.#runtime?.start()
    this.#artifacts = new Artifacts({
      dataDir,
      store,
      libp2p: mesh.libp2p,
      logger,
      arch: archName(),
      quota: process.env.KM1S_ARTIFACTS_QUOTA,
      // TEST ONLY: lets a lab test run a hostile peer (docs/artifacts.md).
      corruptServedBlocks: process.env.KM1S_TEST_CORRUPT_BLOCKS === '1',
    })
    await this.#artifacts.start()
    // Loopback for the node itself; the bridge's .1 for its containers (their resolv.conf names it).
    const dnsAddresses = (subnet: string | undefined) => [
      '127.0.0.1',
      ...(this.#runtime?.kind === 'oci' ? [bridgeAddress(subnet ?? '10.42.0.0/24')] : []),
    ]
    const dnsPort = this.config.dnsPort === undefined ? 53 : this.config.dnsPort
    if (dnsPort !== null) {
      this.#dns = new DnsService({
        store,
        port: dnsPort,
        addresses: dnsAddresses(this.#network?.subnet ?? this.config.subnet),
        upstreams: this.config.dnsUpstreams,
        logger,
      })
      await this.#dns.start()
    }
    this.#network?.onSubnetChange(async (cidr) => {
      await this.#runtime?.setSubnet?.(cidr)
      await this.#dns?.setAddresses(dnsAddresses(cidr))
    })
    const membership = this.#membership
    this.#remote = new Remote({
      libp2p: mesh.libp2p,
      self: mesh.peerId.toString(),
      runtime: this.#runtime,
      statusKeys: () => store.list('status/').map((r) => r.key),
      members: () => membership.members(),
      logger,
    })
    await this.#remote.start()
    // Scheduler: placement over this node's view, its own replicas through the runtime, their artifacts
    // pulled through artifacts/ first. The start-up grace equals the detector's dead time (docs/scheduler.md).
    // Health checks of this node's replicas feed the status records through the scheduler's seam.
    const workloadOf = (name: string) => store.get(`workload/${name}`)?.value as WorkloadValue | undefined
    this.#health = new HealthMonitor({
      runtime: this.#runtime,
      workload: workloadOf,
      onChange: () => this.#scheduler?.refresh(),
      restart: (name, why) => this.#scheduler?.restartReplica(name, why),
      logger,
    })
    const health = this.#health
    this.#scheduler = new Scheduler({
      selfId: mesh.peerId.toString(),
      nodeName: () => this.#name,
      store,
      membership: this.#membership,
      runtime: this.#runtime,
      artifacts: this.#artifacts,
      isHealthy: (name) => health.isHealthy(name),
      logger,
      startupGraceMs: this.config.detector?.deadMs,
    })
    this.#scheduler.start()
    this.#health.start()
    this.#services = new Services({ store, logger })
    this.#services.start()
    const { handlers, streams, upgrades } = createHandlers({
      name: () => this.#name,
      dataDir,
      startedAt: this.#startedAt,
      mesh,
      membership: this.#membership,
      store,
      replication: this.#replication,
      runtime: this.#runtime,
      dns: this.#dns,
      remote: this.#remote,
      network: this.#network,
      scheduler: this.#scheduler,
      artifacts: this.#artifacts,
      services: this.#services,
    })
    this.#api = new ApiServer({ socket: this.config.socket, handlers, streams, upgrades, logger })
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
      ['dns', () => this.#dns?.stop()],
      ['remote', () => this.#remote?.stop()],
      ['services', () => this.#services?.stop()],
      ['health', () => this.#health?.stop()],
      ['scheduler', () => this.#scheduler?.stop()],
      ['artifacts', () => this.#artifacts?.stop()],
      ['runtime', () => this.#runtime?.stop()],
      ['network', () => this.#network?.stop()],
      ['membership', () => this.#membership?.stop()],
      ['replication', () => this.#replication?.stop()],
      ['mesh', () => this.#mesh?.stop()],
      ['state', () => this.#store?.stop()],
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

  #networkWanted(): boolean {
    const choice = this.config.runtime ?? 'auto'
    return this.config.network ?? (process.getuid?.() === 0 && (choice === 'auto' || choice === 'oci'))
  }

  /**
   * On a first start the subnet claim waits for the records of peers (≤ 2 s), so that it sees their claims:
   * until a sync session finished, or at once when no peer is known at all (a lone first node).
   */
  async #waitForFirstSync(): Promise<void> {
    const deadline = Date.now() + 2_000
    while (Date.now() < deadline) {
      if ((this.#replication?.stats().syncSessions ?? 0) > 0) return
      const mesh = this.#mesh?.stats()
      if (Date.now() > deadline - 1_700 && mesh?.knownPeers === 0 && mesh.connectedPeers === 0) return
      await new Promise((r) => setTimeout(r, 25))
    }
  }

  #selfInfo(): NodeValue {
    return {
      wgPublicKey: this.#network?.publicKey ?? null,
      ...(this.#network ? { wgPort: this.#network.port } : {}),
      name: this.#name,
      arch: archName(),
      cpus: availableParallelism(),
      memory: totalmem(),
      version: KM1S_VERSION,
      addresses: (this.#mesh?.addresses() ?? []).map((a) => a.replace(/\/p2p\/[^/]+$/, '')).slice(0, 16),
      startedAt: this.#startedAt,
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
    if (isDatabaseLocked(err)) {
      const pid = (await readFile(pidFile, 'utf8').catch(() => '')).trim()
      throw new Km1sError(
        'ERR_AGENT_RUNNING',
        `Another km1s agent${pid ? ` (pid ${pid})` : ''} is already running on ${dataDir}; stop it first or use another --data-dir.`,
        { cause: err },
      )
    }
    throw new Km1sError(
      'ERR_DATABASE',
      `Cannot open the database in ${path}: ${errorMessage((err as { cause?: unknown }).cause ?? err)}.`,
      { cause: err },
    )
  }
  return db
}
