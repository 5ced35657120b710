// km1s's one nftables table, `inet km1s`, rendered from data and replaced atomically by one `nft -f`: the
// file declares the table (so the delete cannot fail), deletes it and makes it again, all in one
// transaction, so the kernel never holds half a rule set. Services add their chains to the same render.
import { spawn } from 'node:child_process'
import { Km1sError } from '../common/errors.ts'
import { BRIDGE, parseSubnet } from './container-net.ts'

export const NFT_TABLE = 'inet km1s'
const NFT_TIMEOUT_MS = 10_000

export interface NftService {
  name: string
  /** The virtual IP (a headless service has none and is not passed). */
  ip: string
  ports: number[]
  /** The serving replicas' IPs; none: connections are refused. */
  endpoints: string[]
}

export interface NftablesInput {
  /** This node's container subnet. */
  subnet: string
  /** The whole cluster range: traffic inside it is never masqueraded (it crosses the overlay as is). */
  clusterCidr: string
  /** The service range (10.43.0.0/16): what no endpoint takes is refused, not sent off to nowhere. */
  serviceCidr?: string
  services?: readonly NftService[]
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/

/** A chain name from a service name (DNS labels: letters, digits, dashes) and port. */
function chainOf(name: string): string {
  return `svc-${name.replace(/[^a-z0-9-]/g, '_')}`
}

/**
 * The whole `nft -f` file. Pure: the same input gives the same bytes, so an unchanged apply can be skipped.
 * Services: one `vmap` from `daddr . l4proto . dport` to a chain per service, which DNATs to its endpoints
 * round-robin (`numgen inc mod N`), in prerouting (containers, other hosts) and output (the node itself).
 */
export function renderNftables(input: NftablesInput): string {
  const subnet = parseSubnet(input.subnet).cidr
  const cluster = parseSubnet(input.clusterCidr).cidr
  const services = [...(input.services ?? [])]
    .filter((s) => IPV4.test(s.ip) && s.ports.length > 0)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  const lines = [`table ${NFT_TABLE}`, `delete table ${NFT_TABLE}`, `table ${NFT_TABLE} {`]
  const elements: string[] = []
  for (const s of services) {
    const endpoints = s.endpoints.filter((e) => IPV4.test(e))
    if (endpoints.length === 0) continue
    for (const port of [...new Set(s.ports)].sort((a, b) => a - b)) {
      for (const proto of ['tcp', 'udp'])
        elements.push(`${s.ip} . ${proto} . ${port} : goto ${chainOf(s.name)}`)
    }
    lines.push(
      `  chain ${chainOf(s.name)} {`,
      endpoints.length === 1
        ? `    dnat ip to ${endpoints[0]}`
        : `    dnat ip to numgen inc mod ${endpoints.length} map { ${endpoints.map((e, i) => `${i} : ${e}`).join(', ')} }`,
      '  }',
    )
  }
  if (input.serviceCidr !== undefined) {
    const range = parseServiceRange(input.serviceCidr)
    lines.push(
      '  map services {',
      '    type ipv4_addr . inet_proto . inet_service : verdict',
      ...(elements.length > 0 ? [`    elements = { ${elements.join(',\n      ')} }`] : []),
      '  }',
      '  chain prerouting {',
      '    type nat hook prerouting priority dstnat; policy accept;',
      '    ip daddr . meta l4proto . th dport vmap @services',
      '  }',
      // nft 1.0.6 refuses `priority dstnat` on the nat output hook; -100 is the same number.
      '  chain output {',
      '    type nat hook output priority -100; policy accept;',
      '    ip daddr . meta l4proto . th dport vmap @services',
      '  }',
      // After DNAT no packet is still addressed to the range: what is left has no endpoint. Refuse it at
      // once (a client fails fast) rather than route it to the bridge, where nothing answers.
      '  chain forward {',
      '    type filter hook forward priority filter; policy accept;',
      `    ip daddr ${range} meta l4proto tcp reject with tcp reset`,
      `    ip daddr ${range} reject`,
      '  }',
      '  chain refuse-local {',
      '    type filter hook output priority filter; policy accept;',
      `    ip daddr ${range} meta l4proto tcp reject with tcp reset`,
      `    ip daddr ${range} reject`,
      '  }',
    )
  }
  lines.push(
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    // Containers reach the LAN and the internet as the node; other nodes' containers see their real address.
    `    ip saddr ${subnet} ip daddr != ${cluster} oifname != "${BRIDGE}" masquerade`,
    // Hairpin: a client whose service connection was sent to a backend on its own bridge would get the
    // reply straight from the backend's address, which it never asked; as the node, the reply comes back
    // through conntrack and is un-DNATed.
    ...(input.serviceCidr !== undefined
      ? [`    ct status dnat ip saddr ${subnet} ip daddr ${subnet} oifname "${BRIDGE}" masquerade`]
      : []),
    '  }',
    '}',
    '',
  )
  return lines.join('\n')
}

function parseServiceRange(cidr: string): string {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr)
  if (!m || !IPV4.test(m[1] as string) || Number(m[2]) < 8 || Number(m[2]) > 30)
    throw new Km1sError(
      'ERR_INVALID_SUBNET',
      `The service range ${cidr} is not an IPv4 network such as 10.43.0.0/16.`,
    )
  return cidr
}

/** Removes the table (agent uninstall, tests); nothing when it is absent. */
export function renderNftablesDelete(): string {
  return `table ${NFT_TABLE}\ndelete table ${NFT_TABLE}\n`
}

/** Runs `nft -f -` with the file on stdin: one atomic transaction. */
export function applyNftables(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('nft', ['-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'], timeout: NFT_TIMEOUT_MS })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    child.on('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'ENOENT'
          ? new Km1sError(
              'ERR_NO_NFT',
              'The nft command was not found; install nftables (apt-get install nftables).',
            )
          : err,
      )
    })
    child.on('close', (code) => {
      if (code === 0) resolve()
      else
        reject(
          new Km1sError(
            'ERR_NFTABLES',
            `Could not apply the km1s nftables table (${stderr.trim().split('\n').slice(0, 3).join('; ') || `exit ${code}`}); run \`km1s doctor\`.`,
          ),
        )
    })
    child.stdin.on('error', () => {})
    child.stdin.end(text)
  })
}
