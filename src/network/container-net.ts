// The node side of a container's network: a named network namespace per container, a veth pair from it to
// the node bridge `km1s0`, and one address of the node's subnet. The arithmetic and the naming are pure; the
// host state is made by a few `ip -batch` runs planned from what `ip -j` shows, so that every call is
// idempotent and finishes whatever a crash left half done. docs/network.md has the picture.
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, statfs } from 'node:fs/promises'
import { Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import * as z from '../common/schema.ts'

export const BRIDGE = 'km1s0'
/** The container's end of its veth, inside its namespace. */
export const CONTAINER_IF = 'eth0'
export const NETNS_DIR = '/run/netns'
export const VETH_PATTERN = /^km1s[0-9a-f]{11}$/
export const MIN_PREFIX = 16
export const MAX_PREFIX = 30
/**
 * The MTU of the bridge and of every container veth: the underlay's 1500 less WireGuard's 80 bytes of
 * overhead (IPv6 outer header), so a packet that crosses the overlay never needs fragmenting.
 */
export const CONTAINER_MTU = 1420

const NSFS_MAGIC = 0x6e736673
const IP_TIMEOUT_MS = 10_000
/** Rounds of observe, plan, apply in attachContainer before giving up. */
const ATTACH_ROUNDS = 3

// --- addresses -----------------------------------------------------------------------------------------

export interface Subnet {
  /** Normalised, e.g. '10.42.0.0/24'. */
  readonly cidr: string
  /** The network address as an unsigned 32-bit number. */
  readonly base: number
  readonly prefix: number
  /** Addresses in the subnet, network and broadcast included. */
  readonly size: number
}

const OCTET = '(0|[1-9][0-9]{0,2})'
const IPV4_RE = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`)
const CidrText = z.string().check(z.regex(/^[0-9.]{7,15}\/[0-9]{1,2}$/))

/** A dotted IPv4 address as an unsigned number; undefined unless it is written canonically (no leading zeros). */
export function parseIPv4(text: string): number | undefined {
  const m = IPV4_RE.exec(text)
  if (m === null) return undefined
  let n = 0
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i])
    if (octet > 255) return undefined
    n = n * 256 + octet
  }
  return n
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
}

function invalidSubnet(cidr: string, why: string): Km1sError {
  return new Km1sError('ERR_INVALID_SUBNET', `Invalid subnet ${JSON.stringify(cidr)}: ${why}.`)
}

/** Validates an IPv4 subnet of /16 to /30 whose address has no host bits set. */
export function parseSubnet(cidr: string | Subnet): Subnet {
  const text = typeof cidr === 'string' ? cidr : cidr.cidr
  const usage = `write an IPv4 network such as 10.42.0.0/24, with a prefix from /${MIN_PREFIX} to /${MAX_PREFIX}`
  if (!CidrText.safeParse(text).success) throw invalidSubnet(text, usage)
  const [addr = '', prefixText = ''] = text.split('/')
  const base = parseIPv4(addr)
  const prefix = Number(prefixText)
  if (base === undefined || String(prefix) !== prefixText) throw invalidSubnet(text, usage)
  if (prefix < MIN_PREFIX || prefix > MAX_PREFIX) {
    throw invalidSubnet(
      text,
      `the prefix must be from /${MIN_PREFIX} (65534 addresses) to /${MAX_PREFIX} (2)`,
    )
  }
  const size = 2 ** (32 - prefix)
  if (base % size !== 0) {
    throw invalidSubnet(
      text,
      `the address has host bits set; write ${formatIPv4(base - (base % size))}/${prefix}`,
    )
  }
  return { cidr: text, base, prefix, size }
}

/** The bridge's own address: the first host address of the subnet. */
export function bridgeAddress(subnet: string | Subnet): string {
  return formatIPv4(parseSubnet(subnet).base + 1)
}

/** Whether `ip` is an address a container may have: in the subnet, not network, broadcast or the bridge. */
export function isContainerAddress(subnet: string | Subnet, ip: string): boolean {
  const s = parseSubnet(subnet)
  const n = parseIPv4(ip)
  return n !== undefined && n >= s.base + 2 && n < s.base + s.size - 1
}

/**
 * The preferred address when it is a free container address, else the lowest free one from .2 up. `used`
 * may hold anything: addresses outside the subnet or not addresses at all are ignored.
 */
export function allocateAddress(
  subnet: string | Subnet,
  used: ReadonlySet<string>,
  preferred?: string,
): string {
  const s = parseSubnet(subnet)
  const taken = new Set<number>()
  for (const u of used) {
    const n = parseIPv4(u)
    if (n !== undefined) taken.add(n)
  }
  if (preferred !== undefined && isContainerAddress(s, preferred)) {
    const n = parseIPv4(preferred) as number
    if (!taken.has(n)) return formatIPv4(n)
  }
  for (let n = s.base + 2; n < s.base + s.size - 1; n++) {
    if (!taken.has(n)) return formatIPv4(n)
  }
  throw new Km1sError(
    'ERR_SUBNET_FULL',
    `The container subnet ${s.cidr} has no free address left; remove a container on this node first.`,
  )
}

/**
 * A fixed, locally administered MAC for the bridge: a bridge without one takes the lowest MAC of its ports,
 * so the gateway's MAC would change whenever a container comes or goes, and containers' ARP entries go stale.
 */
export function bridgeMac(subnet: string | Subnet): string {
  const h = createHash('sha256')
    .update(`${BRIDGE} ${parseSubnet(subnet).cidr}`)
    .digest()
  return ['02', ...[...h.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':')
}

/**
 * The MAC of a container's eth0, from its address (as Docker does): a container made again at the same
 * address (a restart, a rolling update) has the same MAC, so the bridge's and its neighbours' ARP entries
 * for that address stay right. A random MAC left them pointing at the old one for up to ~30 s (REACHABLE,
 * refreshed by the node's own retries), and the new container was unreachable meanwhile.
 */
export function containerMac(ip: string): string {
  return ['02', '42', ...ip.split('.').map((b) => Number(b).toString(16).padStart(2, '0'))].join(':')
}

// --- names ---------------------------------------------------------------------------------------------

const Instance = z.string().check(z.regex(/^[0-9a-f]{6}$/))
const Container = z.string().check(z.regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/), z.maxLength(40))
/** Any name `ip netns add` accepts that is safe as one token of an `ip -batch` line. */
const NetnsName = z.string().check(z.regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$/))

function checkInstance(instance: string): void {
  if (!Instance.safeParse(instance).success) {
    throw new Km1sError(
      'ERR_INVALID_NAME',
      `Invalid instance id ${JSON.stringify(instance)}: use 6 lowercase hex digits.`,
    )
  }
}

function checkNames(instance: string, container: string): void {
  checkInstance(instance)
  if (!Container.safeParse(container).success) {
    throw new Km1sError(
      'ERR_INVALID_NAME',
      `Invalid container name ${JSON.stringify(container)}: use at most 40 lowercase letters, digits and inner dashes.`,
    )
  }
}

function checkHostNetns(hostNetns: string | undefined): void {
  if (hostNetns !== undefined && !NetnsName.safeParse(hostNetns).success) {
    throw new Km1sError(
      'ERR_INVALID_NAME',
      `Invalid network namespace name ${JSON.stringify(hostNetns)}: use letters, digits, dots, dashes and underscores.`,
    )
  }
}

/** The host end of a container's veth: 15 characters, the kernel's limit for interface names. */
export function vethName(instance: string, container: string): string {
  checkNames(instance, container)
  return `km1s${createHash('sha256').update(`${instance}/${container}`).digest('hex').slice(0, 11)}`
}

export function isKm1sVeth(name: string): boolean {
  return VETH_PATTERN.test(name)
}

export function netnsName(instance: string, container: string): string {
  checkNames(instance, container)
  return `km1s-${instance}-${container}`
}

// --- what `ip -j` shows --------------------------------------------------------------------------------

const IpAddr = z.object({ family: z.string(), local: z.string(), prefixlen: z.number() })
const IpLink = z.object({
  ifindex: z.number(),
  ifname: z.string(),
  flags: z._default(z.array(z.string()), []),
  link_index: z.optional(z.number()),
  master: z.optional(z.string()),
  address: z.optional(z.string()),
  inet6_addr_gen_mode: z.optional(z.string()),
  mtu: z.optional(z.number()),
  linkinfo: z.optional(z.object({ info_kind: z.optional(z.string()) })),
  addr_info: z.optional(z.array(IpAddr)),
})
const IpRoute = z.object({ dst: z.string(), gateway: z.optional(z.string()), dev: z.optional(z.string()) })

export interface LinkState {
  name: string
  ifindex: number
  /** 'veth', 'bridge', …; null for plain devices such as lo. */
  kind: string | null
  /** A veth's peer's ifindex (in the peer's namespace). */
  peerIndex: number | null
  master: string | null
  /** Administratively up. */
  up: boolean
  mac: string | null
  addrGenMode: string | null
  mtu: number | null
  /** 'a.b.c.d/p' */
  inet: string[]
  /** 'x::y/p' */
  inet6: string[]
}

export interface RouteState {
  dst: string
  gateway: string | null
  dev: string | null
}

export interface NetnsState {
  links: LinkState[]
  routes: RouteState[]
}

function parseJsonArray<T>(schema: z.ZodMiniType<T>, text: string, what: string): T[] {
  const parsed = z.array(schema).safeParse(JSON.parse(text === '' ? '[]' : text))
  if (!parsed.success)
    throw new Error(`unexpected ip -j output for ${what}: ${parsed.error.issues[0]?.message}`)
  return parsed.data
}

/**
 * Reads the output of `ip -d -j -batch -` fed `link show`, `addr show` and optionally `route show default`:
 * one JSON array per line. `link show -d` alone has the IPv6 address generation mode, `addr show` alone the
 * addresses, so the two are merged by ifindex.
 */
export function parseNetnsState(stdout: string): NetnsState {
  const [linksText = '', addrsText = '', routesText = ''] = stdout.split('\n').filter((l) => l.trim() !== '')
  const links = parseJsonArray(IpLink, linksText, 'link show')
  const addrs = new Map(
    parseJsonArray(IpLink, addrsText, 'addr show').map((l) => [l.ifindex, l.addr_info ?? []]),
  )
  const routes = parseJsonArray(IpRoute, routesText, 'route show')
  return {
    links: links.map((l) => {
      const info = addrs.get(l.ifindex) ?? []
      const of = (family: string) =>
        info.filter((a) => a.family === family).map((a) => `${a.local}/${a.prefixlen}`)
      return {
        name: l.ifname,
        ifindex: l.ifindex,
        kind: l.linkinfo?.info_kind ?? null,
        peerIndex: l.link_index ?? null,
        master: l.master ?? null,
        up: l.flags.includes('UP'),
        mac: l.address ?? null,
        addrGenMode: l.inet6_addr_gen_mode ?? null,
        mtu: l.mtu ?? null,
        inet: of('inet'),
        inet6: of('inet6'),
      }
    }),
    routes: routes.map((r) => ({ dst: r.dst, gateway: r.gateway ?? null, dev: r.dev ?? null })),
  }
}

// --- plans (pure) --------------------------------------------------------------------------------------

export interface BridgeWanted {
  subnet: Subnet
  /** Whether the kernel has IPv6 (then the bridge must not get a link-local address). */
  ipv6: boolean
}

/** The `ip -batch` lines that make `km1s0` as wanted from what the namespace has; none when it is. */
export function planBridge(state: NetnsState, wanted: BridgeWanted): string[] {
  const addr = `${bridgeAddress(wanted.subnet)}/${wanted.subnet.prefix}`
  const mac = bridgeMac(wanted.subnet)
  const br = state.links.find((l) => l.name === BRIDGE)
  if (br === undefined) {
    return [
      `link add name ${BRIDGE} address ${mac} mtu ${CONTAINER_MTU} type bridge`,
      ...(wanted.ipv6 ? [`link set dev ${BRIDGE} addrgenmode none`] : []),
      `addr add ${addr} dev ${BRIDGE}`,
      `link set dev ${BRIDGE} up`,
    ]
  }
  if (br.kind !== 'bridge') {
    throw new Km1sError(
      'ERR_BRIDGE_CONFLICT',
      `A network interface named ${BRIDGE} exists and is not a bridge; delete it (ip link del ${BRIDGE}) and start the agent again.`,
    )
  }
  const lines: string[] = []
  if (br.mac !== mac) lines.push(`link set dev ${BRIDGE} address ${mac}`)
  if (br.mtu !== CONTAINER_MTU) lines.push(`link set dev ${BRIDGE} mtu ${CONTAINER_MTU}`)
  // Without this the kernel adds a link-local address again as soon as the first port brings carrier.
  if (wanted.ipv6 && br.addrGenMode !== 'none') lines.push(`link set dev ${BRIDGE} addrgenmode none`)
  for (const a of br.inet6) lines.push(`addr del ${a} dev ${BRIDGE}`)
  lines.push(...planAddress(BRIDGE, br.inet, addr))
  if (!br.up) lines.push(`link set dev ${BRIDGE} up`)
  return lines
}

/**
 * Lines that leave exactly `addr` as the device's IPv4 address. Wrong ones go first; the wanted one is
 * (re)applied after any deletion because deleting a primary address also deletes its secondaries.
 */
function planAddress(dev: string, have: string[], addr: string): string[] {
  const wrong = have.filter((a) => a !== addr)
  const lines = wrong.map((a) => `addr del ${a} dev ${dev}`)
  if (wrong.length > 0 || !have.includes(addr)) lines.push(`addr replace ${addr} dev ${dev}`)
  return lines
}

export interface AttachWanted {
  netns: string
  veth: string
  subnet: Subnet
  ip: string
  ipv6: boolean
}

export interface AttachPlan {
  /** In the container's namespace, before `host`: removes an `eth0` that is not the peer of our veth. */
  containerFirst: string[]
  host: string[]
  container: string[]
}

export function planIsEmpty(plan: AttachPlan): boolean {
  return plan.containerFirst.length + plan.host.length + plan.container.length === 0
}

/** What to run where so that the container's namespace is attached as wanted; every list empty when it is. */
export function planAttach(host: NetnsState, container: NetnsState, wanted: AttachWanted): AttachPlan {
  if (!host.links.some((l) => l.name === BRIDGE && l.kind === 'bridge')) {
    throw new Km1sError(
      'ERR_NO_BRIDGE',
      `The bridge ${BRIDGE} is missing; restart the agent, which makes it before any container.`,
    )
  }
  const { veth: vname, netns } = wanted
  const veth = host.links.find((l) => l.name === vname)
  const eth0 = container.links.find((l) => l.name === CONTAINER_IF)
  const paired =
    veth !== undefined &&
    eth0 !== undefined &&
    veth.kind === 'veth' &&
    eth0.kind === 'veth' &&
    veth.peerIndex === eth0.ifindex &&
    eth0.peerIndex === veth.ifindex
  const plan: AttachPlan = { containerFirst: [], host: [], container: [] }
  if (!paired) {
    if (eth0 !== undefined) plan.containerFirst.push(`link del dev ${CONTAINER_IF}`)
    if (veth !== undefined) plan.host.push(`link del dev ${vname}`)
    // Made in the host namespace with the peer born in the container's: nothing ever appears elsewhere.
    plan.host.push(
      `link add name ${vname} mtu ${CONTAINER_MTU} type veth peer name ${CONTAINER_IF} address ${containerMac(wanted.ip)} mtu ${CONTAINER_MTU} netns ${netns}`,
    )
  }
  const fresh = !paired
  if (wanted.ipv6 && (fresh || veth?.addrGenMode !== 'none'))
    plan.host.push(`link set dev ${vname} addrgenmode none`)
  if (!fresh) for (const a of veth?.inet6 ?? []) plan.host.push(`addr del ${a} dev ${vname}`)
  if (!fresh && veth?.mtu !== CONTAINER_MTU) plan.host.push(`link set dev ${vname} mtu ${CONTAINER_MTU}`)
  if (fresh || veth?.master !== BRIDGE || !veth.up)
    plan.host.push(`link set dev ${vname} master ${BRIDGE} up`)

  const lo = container.links.find((l) => l.name === 'lo')
  if (lo === undefined || !lo.up) plan.container.push('link set dev lo up')
  const addr = `${wanted.ip}/${wanted.subnet.prefix}`
  const addrLines = planAddress(CONTAINER_IF, fresh ? [] : (eth0?.inet ?? []), addr)
  if (!fresh && eth0?.mtu !== CONTAINER_MTU)
    plan.container.push(`link set dev ${CONTAINER_IF} mtu ${CONTAINER_MTU}`)
  plan.container.push(...addrLines)
  if (fresh || !eth0?.up) plan.container.push(`link set dev ${CONTAINER_IF} up`)
  const gateway = bridgeAddress(wanted.subnet)
  const routed = container.routes.some(
    (r) => r.dst === 'default' && r.gateway === gateway && r.dev === CONTAINER_IF,
  )
  // A changed address can take routes through its subnet with it, so the route follows any address change.
  if (fresh || addrLines.length > 0 || !routed) {
    plan.container.push(`route replace default via ${gateway} dev ${CONTAINER_IF}`)
  }
  return plan
}

// --- running ip ----------------------------------------------------------------------------------------

class IpFailure extends Error {
  readonly stderr: string
  constructor(message: string, stderr: string) {
    super(message)
    this.stderr = stderr
  }
}

/** Runs `ip [-n netns] args…` with `input` on stdin; rejects with ip's own words. */
function ip(netns: string | undefined, args: string[], input?: string): Promise<string> {
  const argv = [...(netns === undefined ? [] : ['-n', netns]), ...args]
  return new Promise((resolve, reject) => {
    const child = spawn('ip', argv, {
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      timeout: IP_TIMEOUT_MS,
    })
    let stdout = ''
    let stderr = ''
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
    })
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        reject(
          new Km1sError(
            'ERR_NO_IPROUTE2',
            'The ip command was not found; install iproute2 (apt-get install iproute2).',
          ),
        )
      } else reject(err)
    })
    child.on('close', (code, signal) => {
      if (code === 0) return resolve(stdout)
      const lines = stderr
        .trim()
        .split('\n')
        .filter((l) => l !== '')
      // In batch mode ip names the failing line as "Command failed -:N".
      const failed = /^Command failed -:(\d+)$/.exec(lines.at(-1) ?? '')
      const batchLine = failed ? input?.split('\n')[Number(failed[1]) - 1] : undefined
      const why = lines.filter((l) => !l.startsWith('Command failed')).join('; ') || `exit ${code ?? signal}`
      reject(new IpFailure(`ip ${argv.join(' ')}: ${why}${batchLine ? ` (at "${batchLine}")` : ''}`, stderr))
    })
    // ip exits without reading its input when it cannot enter the namespace: that EPIPE is not the error.
    child.stdin?.on('error', () => {})
    child.stdin?.end(input)
  })
}

function ipBatch(netns: string | undefined, lines: string[]): Promise<string> {
  return ip(netns, ['-batch', '-'], `${lines.join('\n')}\n`)
}

async function observe(netns: string | undefined, routes: boolean): Promise<NetnsState> {
  const lines = ['link show', 'addr show', ...(routes ? ['route show default'] : [])]
  return parseNetnsState(await ip(netns, ['-d', '-j', '-batch', '-'], `${lines.join('\n')}\n`))
}

let ipv6Cache: boolean | undefined
function kernelHasIpv6(): boolean {
  ipv6Cache ??= existsSync('/proc/sys/net/ipv6')
  return ipv6Cache
}

function networkError(what: string, err: unknown): Km1sError {
  if (err instanceof Km1sError) return err
  const detail = err instanceof Error ? err.message : String(err)
  return new Km1sError(
    'ERR_CONTAINER_NETWORK',
    `Could not ${what} (${detail}); check the agent log and run \`km1s doctor\`.`,
    { cause: err },
  )
}

// --- host state ----------------------------------------------------------------------------------------

export interface BridgeOptions {
  subnet: string | Subnet
  /** Work in this named network namespace instead of the current one (tests, the lab). */
  hostNetns?: string | undefined
  log?: Logger | undefined
}

export interface ApplyResult {
  /** The `ip -batch` lines that were run; empty when everything was as wanted. */
  applied: string[]
}

/** Makes the bridge `km1s0` with the subnet's .1 address, up, without IPv6. Idempotent. */
export async function ensureBridge(opts: BridgeOptions): Promise<ApplyResult> {
  const subnet = parseSubnet(opts.subnet)
  checkHostNetns(opts.hostNetns)
  try {
    const lines = planBridge(await observe(opts.hostNetns, false), { subnet, ipv6: kernelHasIpv6() })
    if (lines.length > 0) {
      opts.log?.info({ bridge: BRIDGE, subnet: subnet.cidr, lines }, 'setting up the container bridge')
      await ipBatch(opts.hostNetns, lines)
    }
    return { applied: lines }
  } catch (err) {
    throw networkError(`set up the bridge ${BRIDGE}`, err)
  }
}

export interface AttachOptions {
  instance: string
  container: string
  subnet: string | Subnet
  /** The container's address, from allocateAddress. */
  ip: string
  hostNetns?: string | undefined
  log?: Logger | undefined
}

export interface AttachResult extends ApplyResult {
  /** Whether the namespace was made by this call. */
  netnsCreated: boolean
}

/**
 * Makes (if missing) the container's namespace with `lo` up and `eth0` holding `ip`, a default route via
 * the bridge, and the host end of the veth on `km1s0`. Idempotent; repairs whatever is missing or wrong.
 */
export async function attachContainer(opts: AttachOptions): Promise<AttachResult> {
  const subnet = parseSubnet(opts.subnet)
  checkHostNetns(opts.hostNetns)
  const netns = netnsName(opts.instance, opts.container)
  const veth = vethName(opts.instance, opts.container)
  if (!isContainerAddress(subnet, opts.ip)) {
    throw new Km1sError(
      'ERR_INVALID_ADDRESS',
      `The address ${JSON.stringify(opts.ip)} is not a container address of ${subnet.cidr}; allocate one with allocateAddress.`,
    )
  }
  const wanted: AttachWanted = { netns, veth, subnet, ip: opts.ip, ipv6: kernelHasIpv6() }
  const what = `attach container ${opts.container} to ${BRIDGE}`
  let netnsCreated = false
  const applied: string[] = []
  try {
    netnsCreated = await ensureNetns(netns)
    let lastError: unknown
    for (let round = 0; round < ATTACH_ROUNDS; round++) {
      // A namespace made just now holds only lo, and the host is assumed to have the bridge and no veth
      // of that name: one run of ip fewer on the common path. When the assumption is wrong (the bridge is
      // gone, or the veth of an earlier namespace of the same name is still going away) the batch fails and
      // the next round looks.
      const optimistic = netnsCreated && round === 0
      const [host, ctr] = optimistic
        ? [HOST_WITH_BRIDGE, EMPTY_NETNS]
        : await Promise.all([observe(opts.hostNetns, false), observe(netns, true)])
      const plan = planAttach(host, ctr, wanted)
      if (planIsEmpty(plan)) return { netnsCreated, applied }
      if (!optimistic)
        opts.log?.info({ container: opts.container, netns, plan }, 'repairing the network of a container')
      try {
        if (plan.containerFirst.length > 0) await ipBatch(netns, plan.containerFirst)
        if (plan.host.length > 0) await ipBatch(opts.hostNetns, plan.host)
        if (plan.container.length > 0) await ipBatch(netns, plan.container)
        applied.push(...plan.containerFirst, ...plan.host, ...plan.container)
        return { netnsCreated, applied }
      } catch (err) {
        if (err instanceof Km1sError) throw err
        lastError = err
        opts.log?.warn({ container: opts.container, err }, 'attaching a container failed; looking again')
      }
    }
    throw lastError
  } catch (err) {
    throw networkError(what, err)
  }
}

function bareLink(name: string, ifindex: number, kind: string | null): LinkState {
  return {
    name,
    ifindex,
    kind,
    peerIndex: null,
    master: null,
    up: false,
    mac: null,
    addrGenMode: null,
    mtu: null,
    inet: [],
    inet6: [],
  }
}
/**
 * The plan for a container whose namespace was made just now and holds only lo, on a host that has the
 * bridge: what attachContainer runs on its common path. For a caller that makes the namespace itself (the
 * runtime's pause process, in one spawn) and runs the lines there; attachContainer repairs if they fail.
 */
export function planFreshAttach(opts: { instance: string; container: string; subnet: string; ip: string }): {
  netns: string
  plan: AttachPlan
} {
  const subnet = parseSubnet(opts.subnet)
  const netns = netnsName(opts.instance, opts.container)
  const wanted: AttachWanted = {
    netns,
    veth: vethName(opts.instance, opts.container),
    subnet,
    ip: opts.ip,
    ipv6: kernelHasIpv6(),
  }
  return { netns, plan: planAttach(HOST_WITH_BRIDGE, EMPTY_NETNS, wanted) }
}

const EMPTY_NETNS: NetnsState = { links: [bareLink('lo', 1, null)], routes: [] }
const HOST_WITH_BRIDGE: NetnsState = { links: [bareLink(BRIDGE, 0, 'bridge')], routes: [] }

/**
 * Makes the named namespace unless it is there; true when it made it. A file in /run/netns that is not a
 * namespace (ip crashed between creating the file and mounting the namespace on it) is replaced.
 */
async function ensureNetns(netns: string): Promise<boolean> {
  const type = await statfs(`${NETNS_DIR}/${netns}`).then(
    (s) => s.type,
    (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw err
    },
  )
  if (type === NSFS_MAGIC) return false
  if (type !== null) await ip(undefined, ['netns', 'del', netns])
  await ip(undefined, ['netns', 'add', netns])
  return true
}

export interface DetachOptions {
  instance: string
  container: string
  hostNetns?: string | undefined
}

/** Deletes the container's veth and namespace; whatever is already gone is fine. */
export async function detachContainer(opts: DetachOptions): Promise<void> {
  checkHostNetns(opts.hostNetns)
  const netns = netnsName(opts.instance, opts.container)
  const veth = vethName(opts.instance, opts.container)
  try {
    // The veth first: deleting it removes both ends at once, where deleting the namespace first leaves
    // the host end to disappear some time later (PLATFORM.md) and a quick re-attach would trip over it.
    // One `ip` for both (`-force`: the second runs whatever the first says): every spawn is a fork of the
    // whole agent (docs/benchmarks.md). Naming a namespace is a mount, so its `netns del` works from
    // whichever network namespace the `ip` is in.
    const named = existsSync(`${NETNS_DIR}/${netns}`)
    const lines = [`link del dev ${veth}`, ...(named ? [`netns del ${netns}`] : [])]
    await ip(opts.hostNetns, ['-force', '-batch', '-'], `${lines.join('\n')}\n`).catch(
      async (err: unknown) => {
        if (!(err instanceof IpFailure)) throw err
        // The node's namespace is gone (a test's, torn down): no veth to delete; the name still goes.
        if (/Cannot open network namespace/.test(err.stderr)) {
          if (named) await ip(undefined, ['netns', 'del', netns]).catch(goneAlready)
          return
        }
        goneAlready(err)
      },
    )
  } catch (err) {
    throw networkError(`remove the network of container ${opts.container}`, err)
  }
}

/** Accepts ip's failures that only say the thing to delete is not there; throws anything else. */
function goneAlready(err: unknown): void {
  if (!(err instanceof IpFailure)) throw err
  const errors = err.stderr.split('\n').filter((l) => l !== '' && !/^Command failed -:\d+$/.test(l))
  if (errors.length === 0 || !errors.every((l) => /Cannot find device|No such file/.test(l))) throw err
}

/** The containers of an instance that have a namespace in /run/netns. */
export async function listContainerNetns(instance: string): Promise<string[]> {
  checkInstance(instance)
  const prefix = `km1s-${instance}-`
  const entries = await readdir(NETNS_DIR).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[]
    throw err
  })
  return entries
    .filter((n) => n.startsWith(prefix) && Container.safeParse(n.slice(prefix.length)).success)
    .map((n) => n.slice(prefix.length))
    .sort()
}

export interface VethInfo {
  name: string
  ifindex: number
  master: string | null
  /** On `km1s0`. */
  attached: boolean
  up: boolean
}

/** The host ends of km1s veths in the host namespace (every instance's: the names do not say whose). */
export async function listKm1sVeths(opts: { hostNetns?: string | undefined } = {}): Promise<VethInfo[]> {
  checkHostNetns(opts.hostNetns)
  try {
    const links = parseJsonArray(
      IpLink,
      (await ip(opts.hostNetns, ['-d', '-j', 'link', 'show'])).trim(),
      'link show',
    )
    return links
      .filter((l) => isKm1sVeth(l.ifname) && l.linkinfo?.info_kind === 'veth')
      .map((l) => ({
        name: l.ifname,
        ifindex: l.ifindex,
        master: l.master ?? null,
        attached: l.master === BRIDGE,
        up: l.flags.includes('UP'),
      }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  } catch (err) {
    throw networkError('list the container veths', err)
  }
}
