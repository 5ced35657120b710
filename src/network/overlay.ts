// The node's network, as one idempotent apply: the subnet claim (subnet.ts), the bridge and container
// MTU (container-net.ts), IP forwarding, the nftables table (nftables.ts) and the WireGuard overlay
// (wireguard.ts, device.ts), all computed from the replicated node and subnet records. It runs again on
// every change of those records, when wireguard-go restarts, and every few seconds to repair the host.
import { spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage, Km1sError } from '../common/errors.ts'
import { writeFileAtomic } from '../common/files.ts'
import { type GridTimer, onGrid } from '../common/grid.ts'
import type { Logger } from '../common/logger.ts'
import * as z from '../common/schema.ts'
import type { JsonValue, NodeValue, SignedRecord, StoreChange } from '../state/index.ts'
import {
  BRIDGE,
  bridgeAddress,
  CONTAINER_MTU,
  ensureBridge,
  parseSubnet,
  type Subnet,
} from './container-net.ts'
import { WgDevice, type WgKind } from './device.ts'
import { applyNftables, type NftService, renderNftables } from './nftables.ts'
import {
  type Claim,
  claimsOf,
  claimWins,
  DEFAULT_CLUSTER_CIDR,
  decideSubnet,
  isNodeSubnet,
  parseClusterCidr,
  SubnetClaimValue,
} from './subnet.ts'
import {
  addAgainArgs,
  DEFAULT_WG_PORT,
  endpointsOf,
  FIRST_CONTACT_MS,
  type FirstContact,
  loadOrCreateWgKey,
  parseWgDump,
  planFirstContact,
  planWgSet,
  runTool,
  WgKey,
  type WgPeerWanted,
  type WgState,
  wgInterfaceName,
} from './wireguard.ts'

const RECONCILE_MS = 5_000
const DEBOUNCE_MS = 50

/** The slice of the replicated store the network uses. */
export interface NetworkStore {
  readonly selfId: string
  get(key: string): SignedRecord | undefined
  list(prefix: string): SignedRecord[]
  put(key: string, value: JsonValue, opts?: { durable?: boolean }): Promise<SignedRecord>
  delete(key: string, opts?: { durable?: boolean }): Promise<SignedRecord>
  onChange(fn: (change: StoreChange) => void): () => void
}

/** The nodes this node knows (membership's view, forgotten ones left out). */
export interface NodeDirectory {
  members(): Array<{ id: string; self: boolean; state: string; info: NodeValue }>
}

export interface NodeNetworkInit {
  store: NetworkStore
  nodes: NodeDirectory
  /** The runtime instance id: names the WireGuard interface. */
  instance: string
  dataDir: string
  clusterCidr?: string | undefined
  /** --subnet: this subnet, claimed but never moved. */
  fixedSubnet?: string | undefined
  wgPort?: number | undefined
  /** Resolves once the first state sync with a peer is done, or after a bounded wait (first start). */
  waitForSync?: () => Promise<void>
  log: Logger
  now?: () => number
  /** The service range: routed from the node to the bridge, and load-balanced by the nftables table. */
  serviceCidr?: string | undefined
  /** The services with virtual IPs and their serving endpoints (services/), read at every apply. */
  services?: () => NftService[]
}

/** Records whose change may change the subnet or the overlay: the whole apply runs. */
const WATCHED = ['subnet/', 'node/']
/** Records that change only the table (services and their replicas): just the table is rendered again. */
const TABLE_ONLY = ['service/', 'status/']

export interface PeerOverlay {
  id: string
  name: string
  state: string
  publicKey: string
  subnet: string | null
  endpoint: string | null
  /** ms since the epoch; null = never. */
  latestHandshake: number | null
  rxBytes: number
  txBytes: number
}

export interface NetworkStatus {
  subnet: string
  clusterCidr: string
  bridge: string
  mtu: number
  interface: string
  kind: WgKind | null
  pid: number | null
  restarts: number
  publicKey: string
  listenPort: number
  applies: number
  applyErrors: number
  lastError: string | null
  peers: PeerOverlay[]
}

const PersistedClaim = z.strictObject({ cidr: z.string(), peer: z.string(), claimedAt: z.number() })

export class NodeNetwork {
  readonly #init: NodeNetworkInit
  readonly #log: Logger
  readonly #now: () => number
  readonly #cluster: string
  readonly #port: number
  readonly #ifname: string
  readonly #keyFile: string
  readonly #claimFile: string
  readonly #subnetListeners: Array<(cidr: string, previous: string) => Promise<void>> = []
  #device: WgDevice | undefined
  #publicKey: string | null = null
  #claim: Claim | undefined
  #applied = { nft: '', forward: false, route: '' }
  #applies = 0
  #applyErrors = 0
  #lastError: string | null = null
  /** A subnet conflict this node cannot settle (its --subnet is another node's); shown as the error. */
  #conflictNote: string | null = null
  #timer: GridTimer | undefined
  #debounce: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #again = false
  /** Whether the next run is the whole apply, or only the table (service and status changes). */
  #full = true
  /** Whether the next run also looks for stuck first handshakes (wireguard.ts `planFirstContact`). */
  #handshakes = false
  #handshakeTimer: NodeJS.Timeout | undefined
  /** Per peer key on the interface: since when, and how often it was added again (first contact). */
  readonly #contacts = new Map<string, FirstContact>()
  #unwatch: (() => void) | undefined
  #started = false
  #stopped = false

  constructor(init: NodeNetworkInit) {
    this.#init = init
    this.#log = init.log.child({ subsystem: 'network' })
    this.#now = init.now ?? Date.now
    this.#cluster = parseClusterCidr(init.clusterCidr ?? DEFAULT_CLUSTER_CIDR).cidr
    if (init.fixedSubnet !== undefined) parseSubnet(init.fixedSubnet)
    this.#port = init.wgPort ?? DEFAULT_WG_PORT
    this.#ifname = wgInterfaceName(init.instance)
    this.#keyFile = join(init.dataDir, 'network', 'wg.key')
    this.#claimFile = join(init.dataDir, 'network', 'subnet.json')
  }

  /** The WireGuard public key, once prepare() ran: it goes into the node record. */
  get publicKey(): string | null {
    return this.#publicKey
  }

  get port(): number {
    return this.#port
  }

  /** This node's subnet, once start() decided it. */
  get subnet(): string | undefined {
    return this.#claim?.cidr
  }

  /** Called after this node moved to another subnet (a lost conflict): the runtime re-addresses. */
  onSubnetChange(fn: (cidr: string, previous: string) => Promise<void>): void {
    this.#subnetListeners.push(fn)
  }

  /** Loads (or makes) the key pair and the persisted claim: before membership writes the node record. */
  async prepare(): Promise<void> {
    const key = await loadOrCreateWgKey(this.#keyFile)
    this.#publicKey = key.publicKey
    const text = await readFile(this.#claimFile, 'utf8').catch(() => undefined)
    if (text !== undefined) {
      try {
        const parsed = PersistedClaim.safeParse(JSON.parse(text))
        if (parsed.success && parsed.data.peer === this.#init.store.selfId) this.#claim = parsed.data
      } catch {
        // unreadable: claimed again
      }
      if (this.#claim === undefined)
        this.#log.warn({ file: this.#claimFile }, 'ignoring an unreadable subnet claim')
    }
  }

  /** Decides the subnet (bounded wait for peers' records on a first start), then makes the node network. */
  async start(): Promise<void> {
    if (this.#started) return
    this.#started = true
    if (this.#publicKey === null) await this.prepare()
    if (this.#claim === undefined && this.#init.fixedSubnet === undefined) await this.#init.waitForSync?.()
    this.#device = new WgDevice({ ifname: this.#ifname, log: this.#log, onRestart: () => this.#schedule(0) })
    await this.#settleSubnet()
    await this.#applyHost()
    await this.#applyOverlay().catch((err: unknown) => this.#failed(err))
    this.#unwatch = this.#init.store.onChange((c) => {
      if (WATCHED.some((p) => c.key.startsWith(p))) this.#schedule(DEBOUNCE_MS)
      else if (TABLE_ONLY.some((p) => c.key.startsWith(p))) this.#schedule(DEBOUNCE_MS, false)
    })
    this.#timer = onGrid(RECONCILE_MS, () => this.#schedule(0))
  }

  async stop(): Promise<void> {
    if (this.#stopped) return
    this.#stopped = true
    this.#timer?.stop()
    clearTimeout(this.#debounce)
    clearTimeout(this.#handshakeTimer)
    this.#unwatch?.()
    await this.#running?.catch(() => {})
    await this.#device?.stop()
  }

  #schedule(delay: number, full = true, handshakes = false): void {
    if (this.#stopped || !this.#started) return
    if (full) this.#full = true
    if (handshakes) this.#handshakes = true
    if (this.#running) {
      this.#again = true
      return
    }
    clearTimeout(this.#debounce)
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined
      const full = this.#full
      const handshakes = this.#handshakes
      this.#full = false
      this.#handshakes = false
      const run = full ? this.#applyAll() : this.#applyTable()
      this.#running = (handshakes ? run.then(() => this.#firstContact()) : run).finally(() => {
        this.#running = undefined
        if (this.#again) {
          this.#again = false
          this.#schedule(DEBOUNCE_MS, false) // #full and #handshakes say what is still owed
        }
      })
    }, delay)
  }

  async #applyAll(): Promise<void> {
    try {
      await this.#settleSubnet()
      await this.#applyHost()
      await this.#applyOverlay()
      this.#lastError = null
    } catch (err) {
      this.#failed(err)
    }
  }

  #conflict(message: string | null): void {
    if (message !== null && message !== this.#conflictNote) this.#log.warn(message)
    this.#conflictNote = message
  }

  #failed(err: unknown): void {
    this.#applyErrors++
    const message = errorMessage(err)
    if (message !== this.#lastError) this.#log.error({ err: message }, 'applying the node network failed')
    this.#lastError = message
  }

  // --- the subnet --------------------------------------------------------------------------------------

  async #settleSubnet(): Promise<void> {
    const { store } = this.#init
    const self = store.selfId
    const records = claimsOf(store.list('subnet/').filter((r) => !r.deleted))
    const previous = this.#claim
    const decision = decideSubnet({
      cluster: parseClusterCidr(this.#cluster),
      self,
      mine: previous,
      records,
      now: this.#now(),
      fixed: this.#init.fixedSubnet,
    })
    const { claim } = decision
    if (decision.changed) {
      this.#log.info(
        { subnet: claim.cidr, previous: previous?.cidr, reason: decision.reason },
        decision.reason === 'lost'
          ? `another node holds ${previous?.cidr} by an earlier claim; moving to ${claim.cidr}`
          : `claiming the subnet ${claim.cidr}`,
      )
      await writeFileAtomic(this.#claimFile, JSON.stringify(claim))
      this.#claim = claim
    }
    const key = `subnet/${claim.cidr}`
    const value: SubnetClaimValue = { peer: self, claimedAt: claim.claimedAt }
    const parsed = SubnetClaimValue.safeParse(store.get(key)?.value)
    const action = claimRecordAction(parsed.success ? parsed.data : undefined, value)
    if (action === 'conflict') {
      this.#conflict(
        `the fixed subnet ${claim.cidr} is claimed earlier by node ${parsed.data?.peer}; start this agent with another --subnet`,
      )
    } else {
      this.#conflict(null)
      if (action === 'write') await store.put(key, value, { durable: true })
    }
    for (const r of store.list('subnet/')) {
      if (r.key !== key && !r.deleted && (r.value as { peer?: unknown } | null)?.peer === self) {
        await store.delete(r.key)
      }
    }
    if (previous !== undefined && previous.cidr !== claim.cidr) {
      for (const fn of this.#subnetListeners) await fn(claim.cidr, previous.cidr)
    }
  }

  // --- the node: bridge, forwarding, nftables ------------------------------------------------------------

  async #applyHost(): Promise<void> {
    const subnet = this.#claim?.cidr as string
    await ensureBridge({ subnet, log: this.#log })
    if (!this.#applied.forward) {
      await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n')
      this.#applied.forward = true
    }
    const serviceCidr = this.#init.serviceCidr
    const nft = this.#renderTable(subnet)
    // The same text is not applied again, except by the periodic repair (someone may have flushed it).
    const repair = this.#applies % 6 === 0
    if (nft !== this.#applied.nft || repair) {
      await applyNftables(nft)
      this.#applied.nft = nft
    }
    // The node's own processes reach service IPs: the route picks a source (the bridge's address, which
    // every node routes back), and the output hook's DNAT then sends the packet on to an endpoint.
    const route = serviceCidr === undefined ? '' : `${serviceCidr} dev ${BRIDGE} src ${bridgeAddress(subnet)}`
    if (route !== '' && (route !== this.#applied.route || repair)) {
      await runIpBatch([`route replace ${route}`])
      this.#applied.route = route
    }
    this.#applies++
  }

  #renderTable(subnet: string): string {
    const serviceCidr = this.#init.serviceCidr
    return renderNftables({
      subnet,
      clusterCidr: this.#cluster,
      ...(serviceCidr !== undefined ? { serviceCidr, services: this.#init.services?.() ?? [] } : {}),
    })
  }

  /**
   * The table alone, after a service or status record changed: no process is spawned when the text is
   * unchanged (most status changes: restarts, reasons), and nothing else of the host is read.
   */
  async #applyTable(): Promise<void> {
    const subnet = this.#claim?.cidr
    if (subnet === undefined) return
    try {
      const nft = this.#renderTable(subnet)
      if (nft === this.#applied.nft) return
      await applyNftables(nft)
      this.#applied.nft = nft
    } catch (err) {
      this.#failed(err)
    }
  }

  // --- the overlay -------------------------------------------------------------------------------------

  #wantedPeers(): PeerWanted[] {
    return wantedPeers({
      cluster: parseClusterCidr(this.#cluster),
      members: this.#init.nodes.members(),
      claims: claimsOf(this.#init.store.list('subnet/').filter((r) => !r.deleted)),
      selfKey: this.#publicKey,
    })
  }

  async #dump(): Promise<WgState> {
    return parseWgDump(await runTool('wg', ['show', this.#ifname, 'dump']))
  }

  async #applyOverlay(): Promise<void> {
    const device = this.#device as WgDevice
    await device.ensure()
    // Up before the peers: WireGuard sends the first keepalive (and so a handshake) when a peer with a
    // persistent keepalive is configured on an interface that is up. A restarted node is then reachable at
    // once, instead of after the peers' 15 s of unanswered packets before they handshake again.
    const lines = planOverlayLink(await this.#observeLink(), {
      ifname: this.#ifname,
      clusterCidr: this.#cluster,
      src: bridgeAddress(this.#claim?.cidr as string),
    })
    if (lines.length > 0) {
      this.#log.debug({ lines }, 'routing the cluster range through WireGuard')
      await runIpBatch(lines)
    }
    const want = {
      publicKey: this.#publicKey as string,
      listenPort: this.#port,
      peers: this.#wantedPeers(),
    }
    const have = await this.#dump()
    const present = new Set(have.peers.map((p) => p.publicKey))
    const args = planWgSet(have, want, this.#keyFile)
    if (args.length > 0) {
      this.#log.debug({ ifname: this.#ifname, args }, 'configuring WireGuard')
      for (const p of want.peers) {
        if (present.has(p.publicKey)) continue
        this.#log.info(
          { peerKey: p.publicKey, endpoint: p.endpoints[0] ?? null, allowedIps: p.allowedIps },
          'adding a WireGuard peer',
        )
      }
      await runTool('wg', ['set', this.#ifname, ...args])
    }
    // A peer added now (or on an interface wireguard-go made again) has its first contact ahead of it.
    const wanted = new Set(want.peers.map((p) => p.publicKey))
    for (const key of this.#contacts.keys()) if (!wanted.has(key)) this.#contacts.delete(key)
    let added = false
    for (const p of want.peers) {
      if (present.has(p.publicKey) && this.#contacts.has(p.publicKey)) continue
      this.#contacts.set(p.publicKey, { addedAt: this.#now(), tries: 0 })
      added = true
    }
    const { later } = planFirstContact({
      peers: have.peers,
      selfKey: want.publicKey,
      alive: aliveKeys(want.peers),
      contacts: this.#contacts,
      now: this.#now(),
    })
    if (added || later) this.#lookAtFirstContact()
  }

  #lookAtFirstContact(): void {
    if (this.#handshakeTimer !== undefined || this.#stopped) return
    this.#handshakeTimer = setTimeout(() => {
      this.#handshakeTimer = undefined
      this.#schedule(0, false, true)
    }, FIRST_CONTACT_MS)
    this.#handshakeTimer.unref()
  }

  /**
   * Adds again each peer whose first handshake is stuck (wireguard.ts `planFirstContact`: two initiations
   * that crossed wait 5 s for WireGuard's retry), a second after an overlay apply added a peer or saw one
   * without a handshake, and again a second later while one may still be stuck.
   */
  async #firstContact(): Promise<void> {
    if (this.#publicKey === null || this.#device === undefined) return
    try {
      const state = await this.#dump()
      const now = this.#now()
      const plan = planFirstContact({
        peers: state.peers,
        selfKey: this.#publicKey,
        alive: aliveKeys(this.#wantedPeers()),
        contacts: this.#contacts,
        now,
      })
      if (plan.again.length > 0) {
        for (const p of plan.again) {
          const c = this.#contacts.get(p.publicKey) as FirstContact
          this.#contacts.set(p.publicKey, { addedAt: now, tries: c.tries + 1 })
          this.#log.info(
            { peerKey: p.publicKey, endpoint: p.endpoint, sinceMs: now - c.addedAt, tries: c.tries + 1 },
            'no WireGuard handshake with a live peer yet: adding it again to start a new one at once',
          )
        }
        await runTool('wg', ['set', this.#ifname, ...addAgainArgs(plan.again)])
      }
      if (plan.later) this.#lookAtFirstContact()
    } catch (err) {
      this.#log.debug({ err: errorMessage(err) }, 'looking at the first WireGuard handshakes failed')
    }
  }

  async #observeLink(): Promise<OverlayLinkState> {
    const [link, routes] = await Promise.all([
      runTool('ip', ['-j', 'link', 'show', 'dev', this.#ifname]),
      runTool('ip', ['-j', 'route', 'show', 'dev', this.#ifname]),
    ])
    const l = (JSON.parse(link) as Array<{ mtu?: number; flags?: string[] }>)[0]
    return {
      mtu: l?.mtu ?? 0,
      up: l?.flags?.includes('UP') ?? false,
      routes: (JSON.parse(routes || '[]') as Array<{ dst: string; prefsrc?: string }>).map((r) => ({
        dst: r.dst,
        src: r.prefsrc ?? null,
      })),
    }
  }

  /** The overlay as `km1s status` shows it: per peer the endpoint, last handshake and bytes. */
  async status(): Promise<NetworkStatus | undefined> {
    if (!this.#started || this.#claim === undefined) return undefined
    const state = await this.#dump().catch(() => undefined)
    const byKey = new Map((state?.peers ?? []).map((p) => [p.publicKey, p]))
    const dev = this.#device?.stats()
    return {
      subnet: this.#claim.cidr,
      clusterCidr: this.#cluster,
      bridge: `${BRIDGE} ${bridgeAddress(this.#claim.cidr)}`,
      mtu: CONTAINER_MTU,
      interface: this.#ifname,
      kind: dev?.kind ?? null,
      pid: dev?.pid ?? null,
      restarts: dev?.restarts ?? 0,
      publicKey: this.#publicKey as string,
      listenPort: state?.listenPort ?? this.#port,
      applies: this.#applies,
      applyErrors: this.#applyErrors,
      lastError: this.#conflictNote ?? this.#lastError,
      peers: this.#wantedPeers().map((p) => {
        const s = byKey.get(p.publicKey)
        return {
          id: p.id,
          name: p.name,
          state: p.state,
          publicKey: p.publicKey,
          subnet: p.subnet,
          endpoint: s?.endpoint ?? p.endpoints[0] ?? null,
          latestHandshake: s && s.latestHandshake > 0 ? s.latestHandshake * 1000 : null,
          rxBytes: s?.rxBytes ?? 0,
          txBytes: s?.txBytes ?? 0,
        }
      }),
    }
  }
}

/**
 * What to do with the `subnet/` record of the subnet this node decided on: `write` it (absent, ours but
 * outdated, or a later claim that ours beats), `keep` it (ours), or `conflict`: an earlier claim of another
 * node, which only a fixed --subnet, that never moves, can meet; rewriting would fight that claim forever.
 */
export function claimRecordAction(
  recorded: SubnetClaimValue | undefined,
  mine: SubnetClaimValue,
): 'write' | 'keep' | 'conflict' {
  if (recorded === undefined) return 'write'
  if (recorded.peer === mine.peer) return recorded.claimedAt === mine.claimedAt ? 'keep' : 'write'
  return claimWins(recorded, mine) ? 'conflict' : 'write'
}

export type PeerWanted = WgPeerWanted & { id: string; state: string; subnet: string | null }

/** Whether a key is of a peer whose node membership sees alive. */
function aliveKeys(peers: readonly PeerWanted[]): (publicKey: string) => boolean {
  const alive = new Set(peers.filter((p) => p.state === 'alive').map((p) => p.publicKey))
  return (key) => alive.has(key)
}

/**
 * Each peer's wanted WireGuard config (pure): every other node with a valid key, its /24s of the cluster
 * range as allowed IPs, its underlay endpoints. A claim outside the range (a record naming 0.0.0.0/0) must
 * not pull all traffic to one peer; a key that is ours or another node's already is skipped.
 */
export function wantedPeers(opts: {
  cluster: Subnet
  members: ReturnType<NodeDirectory['members']>
  claims: readonly Claim[]
  selfKey: string | null
}): PeerWanted[] {
  const subnets = new Map<string, string[]>()
  for (const c of opts.claims) {
    if (isNodeSubnet(opts.cluster, c.cidr)) subnets.set(c.peer, [...(subnets.get(c.peer) ?? []), c.cidr])
  }
  const peers: PeerWanted[] = []
  const seen = new Set<string>()
  for (const m of opts.members) {
    const key = m.info.wgPublicKey
    if (m.self || key === null || !WgKey.safeParse(key).success || seen.has(key) || key === opts.selfKey)
      continue
    seen.add(key)
    const cidrs = (subnets.get(m.id) ?? []).sort()
    peers.push({
      id: m.id,
      state: m.state,
      name: m.info.name,
      publicKey: key,
      allowedIps: cidrs,
      subnet: cidrs[0] ?? null,
      endpoints: endpointsOf(m.info.addresses, m.info.wgPort ?? DEFAULT_WG_PORT),
    })
  }
  return peers
}

export interface OverlayLinkState {
  mtu: number
  up: boolean
  routes: Array<{ dst: string; src: string | null }>
}

/**
 * The `ip -batch` lines that leave the WireGuard interface up at the container MTU, with one route for the
 * whole cluster range (the node's own /24 on the bridge is more specific) from the bridge address, so that
 * traffic the node itself sends into the overlay comes from an address the peers accept. Pure.
 */
export function planOverlayLink(
  have: OverlayLinkState,
  want: { ifname: string; clusterCidr: string; src: string },
): string[] {
  const lines: string[] = []
  if (have.mtu !== CONTAINER_MTU) lines.push(`link set dev ${want.ifname} mtu ${CONTAINER_MTU}`)
  if (!have.up) lines.push(`link set dev ${want.ifname} up`)
  for (const r of have.routes)
    if (r.dst !== want.clusterCidr) lines.push(`route del ${r.dst} dev ${want.ifname}`)
  const route = have.routes.find((r) => r.dst === want.clusterCidr)
  if (route === undefined || route.src !== want.src)
    lines.push(`route replace ${want.clusterCidr} dev ${want.ifname} src ${want.src}`)
  return lines
}

async function runIpBatch(lines: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn('ip', ['-batch', '-'], { stdio: ['pipe', 'ignore', 'pipe'], timeout: 10_000 })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    child.on('error', reject)
    child.on('close', (code) =>
      code === 0
        ? resolve()
        : reject(
            new Km1sError(
              'ERR_OVERLAY',
              `Could not route the overlay (${stderr.trim()}); run \`km1s doctor\`.`,
            ),
          ),
    )
    child.stdin.on('error', () => {})
    child.stdin.end(`${lines.join('\n')}\n`)
  })
}
