// WireGuard for the overlay: the node's key pair, the interface name, what `wg show dump` says, and the
// plan that brings the interface's peers to what the node records want (pure), plus the small runner of
// `wg` and `ip`. The device itself (kernel or the supervised wireguard-go) is device.ts's.
import { execFile } from 'node:child_process'
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { isIPv4, isIPv6 } from 'node:net'
import { promisify } from 'node:util'
import { Km1sError } from '../common/errors.ts'
import { writeFileAtomic } from '../common/files.ts'
import * as z from '../common/schema.ts'

const execFileAsync = promisify(execFile)

export const DEFAULT_WG_PORT = 51820
/** Keeps NAT mappings and the peer's view of our endpoint fresh; also how fast a restarted peer is found. */
export const PERSISTENT_KEEPALIVE = 25
const RUN_TIMEOUT_MS = 10_000

/** `km1sw` + the runtime instance id: unique per node (wireguard-go's UAPI socket directory is shared by
 *  every namespace of the host) and 11 characters, within the kernel's 15. */
export function wgInterfaceName(instance: string): string {
  if (!/^[0-9a-f]{6}$/.test(instance)) throw new Error(`bad instance id ${instance}`)
  return `km1sw${instance}`
}

// --- keys ----------------------------------------------------------------------------------------------

export const WgKey = z.string().check(z.regex(/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/))

// An X25519 private key in PKCS#8 DER is this prefix and the 32 raw bytes.
const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex')

/** The public key (base64, as wg prints it) of a base64 private key. */
export function wgPublicKey(privateKey: string): string {
  const raw = Buffer.from(privateKey, 'base64')
  if (raw.length !== 32) throw new Error('a WireGuard private key is 32 bytes')
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_X25519, raw]), format: 'der', type: 'pkcs8' })
  const x = createPublicKey(key).export({ format: 'jwk' }).x as string
  return Buffer.from(x, 'base64url').toString('base64')
}

export function generateWgPrivateKey(): string {
  const d = generateKeyPairSync('x25519').privateKey.export({ format: 'jwk' }).d as string
  return Buffer.from(d, 'base64url').toString('base64')
}

/** The node's key pair, made once and kept in `path` (the private key alone, base64, as `wg` reads it). */
export async function loadOrCreateWgKey(path: string): Promise<{ privateKey: string; publicKey: string }> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined
    throw err
  })
  if (text !== undefined) {
    const privateKey = text.trim()
    if (!WgKey.safeParse(privateKey).success) {
      throw new Km1sError(
        'ERR_WG_KEY',
        `The WireGuard key in ${path} is damaged; delete the file and restart the agent (a new key is made and announced).`,
      )
    }
    return { privateKey, publicKey: wgPublicKey(privateKey) }
  }
  const privateKey = generateWgPrivateKey()
  await writeFileAtomic(path, `${privateKey}\n`, 0o600)
  return { privateKey, publicKey: wgPublicKey(privateKey) }
}

// --- endpoints -----------------------------------------------------------------------------------------

/**
 * WireGuard endpoints (`ip:port`, `[ip6]:port`) from a node's libp2p multiaddrs: its underlay addresses.
 * Loopback, unspecified and link-local ones are useless to another node; IPv4 first.
 */
export function endpointsOf(addresses: readonly string[], port: number): string[] {
  const v4: string[] = []
  const v6: string[] = []
  for (const a of addresses) {
    const m = /^\/(ip4|ip6)\/([^/]+)\//.exec(a)
    if (!m) continue
    const ip = m[2] as string
    if (m[1] === 'ip4' && isIPv4(ip) && !/^(127\.|0\.|169\.254\.)/.test(ip)) v4.push(`${ip}:${port}`)
    if (m[1] === 'ip6' && isIPv6(ip) && ip !== '::1' && ip !== '::' && !/^fe[89ab]/i.test(ip))
      v6.push(`[${ip}]:${port}`)
  }
  return [...new Set([...v4, ...v6])]
}

// --- what the interface has ----------------------------------------------------------------------------

export interface WgPeerState {
  publicKey: string
  endpoint: string | null
  allowedIps: string[]
  /** Seconds since the epoch; 0 = never. */
  latestHandshake: number
  rxBytes: number
  txBytes: number
  keepalive: number
}

export interface WgState {
  publicKey: string | null
  listenPort: number
  peers: WgPeerState[]
}

/** Parses `wg show IF dump`: the interface line, then one tab-separated line per peer. */
export function parseWgDump(text: string): WgState {
  const lines = text.split('\n').filter((l) => l.trim() !== '')
  const [head, ...rest] = lines
  const h = (head ?? '').split('\t')
  const none = (v: string | undefined) => (v === undefined || v === '(none)' || v === '' ? null : v)
  return {
    publicKey: none(h[1]),
    listenPort: Number(h[2] ?? 0) || 0,
    peers: rest.map((l) => {
      const f = l.split('\t')
      const allowed = none(f[3])
      return {
        publicKey: f[0] ?? '',
        endpoint: none(f[2]),
        allowedIps: allowed === null ? [] : allowed.split(',').sort(),
        latestHandshake: Number(f[4] ?? 0) || 0,
        rxBytes: Number(f[5] ?? 0) || 0,
        txBytes: Number(f[6] ?? 0) || 0,
        keepalive: f[7] === 'off' ? 0 : Number(f[7] ?? 0) || 0,
      }
    }),
  }
}

// --- what it should have -------------------------------------------------------------------------------

export interface WgPeerWanted {
  publicKey: string
  /** Node name, for logs and status. */
  name: string
  allowedIps: string[]
  /** Candidates, best first; empty when the node announced none. */
  endpoints: string[]
}

export interface WgWanted {
  publicKey: string
  listenPort: number
  peers: WgPeerWanted[]
}

/**
 * The arguments of one `wg set IF …` that bring the interface from `have` to `want`, or [] when it is
 * there already. `privateKeyFile` is where `wg` reads the key. An endpoint is only set when the current
 * one is none of the peer's candidates: WireGuard roams to where the peer really sends from, and
 * resetting it on every apply would undo that.
 */
export function planWgSet(have: WgState, want: WgWanted, privateKeyFile: string): string[] {
  const args: string[] = []
  if (have.publicKey !== want.publicKey || have.listenPort !== want.listenPort) {
    args.push('listen-port', String(want.listenPort), 'private-key', privateKeyFile)
  }
  const wanted = new Map(want.peers.map((p) => [p.publicKey, p]))
  for (const p of have.peers) if (!wanted.has(p.publicKey)) args.push('peer', p.publicKey, 'remove')
  const current = new Map(have.peers.map((p) => [p.publicKey, p]))
  for (const p of [...want.peers].sort((a, b) => (a.publicKey < b.publicKey ? -1 : 1))) {
    const cur = current.get(p.publicKey)
    const allowed = [...p.allowedIps].sort()
    const peerArgs: string[] = []
    if (p.endpoints.length > 0 && (cur?.endpoint == null || !p.endpoints.includes(cur.endpoint)))
      peerArgs.push('endpoint', p.endpoints[0] as string)
    if (cur === undefined || cur.keepalive !== PERSISTENT_KEEPALIVE)
      peerArgs.push('persistent-keepalive', String(PERSISTENT_KEEPALIVE))
    if (cur === undefined || cur.allowedIps.join(',') !== allowed.join(','))
      peerArgs.push('allowed-ips', allowed.join(','))
    if (peerArgs.length > 0) args.push('peer', p.publicKey, ...peerArgs)
  }
  return args
}

// --- first contact -------------------------------------------------------------------------------------

/** How long after adding a peer (or adding it again) a missing handshake counts as stuck. */
export const FIRST_CONTACT_MS = 1_000
/** Times a peer is added again before WireGuard's own retries (every 5 s) are left to it. */
export const FIRST_CONTACT_TRIES = 4

/** Since when this interface has had a peer, and how often it was added again for want of a handshake. */
export interface FirstContact {
  /** ms since the epoch */
  addedAt: number
  tries: number
}

/**
 * Which peers to add again because their first handshake is stuck, and whether to look again later. Pure.
 *
 * Two nodes that add each other at the same moment both send a handshake initiation; when the two cross,
 * each side answers the other's and drops the answer to its own (it is no longer waiting for one), so both
 * hold a session only the other could confirm, and neither sends until WireGuard retries its initiation
 * 5 s later (measured with two wireguard-go in namespaces configured at once: 2 of 12 took 5.2 s, the
 * others under 0.1 s). The same 5 s follow an initiation lost because the other side did not know us yet
 * and had no endpoint to answer with. WireGuard sends at most one initiation per 5 s, also when told to
 * send a keepalive, so the only way to try at once is a fresh peer: `remove` and add it again.
 *
 * Only the node whose public key sorts first does it, so the two never start crossing again together; only
 * for a peer whose node is alive (its underlay works), with an endpoint, and never handshaken with.
 */
export function planFirstContact(opts: {
  peers: readonly WgPeerState[]
  selfKey: string
  alive: (publicKey: string) => boolean
  contacts: ReadonlyMap<string, FirstContact>
  now: number
}): { again: WgPeerState[]; later: boolean } {
  const again: WgPeerState[] = []
  let later = false
  for (const p of opts.peers) {
    if (p.latestHandshake > 0 || p.endpoint === null || !(opts.selfKey < p.publicKey)) continue
    const c = opts.contacts.get(p.publicKey)
    if (c === undefined || c.tries >= FIRST_CONTACT_TRIES || !opts.alive(p.publicKey)) continue
    later = true
    if (opts.now - c.addedAt >= FIRST_CONTACT_MS) again.push(p)
  }
  return { again, later }
}

/** The `wg set` arguments that remove each peer and add it again as it is: endpoint, keepalive, IPs. */
export function addAgainArgs(peers: readonly WgPeerState[]): string[] {
  const args: string[] = []
  for (const p of peers) {
    args.push('peer', p.publicKey, 'remove', 'peer', p.publicKey)
    if (p.endpoint !== null) args.push('endpoint', p.endpoint)
    args.push('persistent-keepalive', String(p.keepalive > 0 ? p.keepalive : PERSISTENT_KEEPALIVE))
    if (p.allowedIps.length > 0) args.push('allowed-ips', [...p.allowedIps].sort().join(','))
  }
  return args
}

// --- running -------------------------------------------------------------------------------------------

/** Runs a host tool; rejects with its own first lines of stderr. */
export async function runTool(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(cmd, args, { timeout: RUN_TIMEOUT_MS, maxBuffer: 4 << 20 })
    return stdout
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string }
    if (e.code === 'ENOENT') {
      const pkg = cmd === 'wg' ? 'wireguard-tools' : cmd === 'ip' ? 'iproute2' : cmd
      throw new Km1sError('ERR_NO_TOOL', `The ${cmd} command was not found; install ${pkg} (scripts/setup).`)
    }
    const why = (e.stderr ?? '').trim().split('\n').slice(0, 3).join('; ') || e.message
    throw new Error(`${cmd} ${args.join(' ')}: ${why}`, { cause: err })
  }
}
