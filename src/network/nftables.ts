// km1s's one nftables table, `inet km1s`, rendered from data and replaced atomically by one `nft -f`: the
// file declares the table (so the delete cannot fail), deletes it and makes it again, all in one
// transaction, so the kernel never holds half a rule set. Services add their chains to the same render.
import { spawn } from 'node:child_process'
import { Km1sError } from '../common/errors.ts'
import { BRIDGE, parseSubnet } from './container-net.ts'

export const NFT_TABLE = 'inet km1s'
const NFT_TIMEOUT_MS = 10_000

export interface NftablesInput {
  /** This node's container subnet. */
  subnet: string
  /** The whole cluster range: traffic inside it is never masqueraded (it crosses the overlay as is). */
  clusterCidr: string
}

/** The whole `nft -f` file. Pure: the same input gives the same bytes, so an unchanged apply can be skipped. */
export function renderNftables(input: NftablesInput): string {
  const subnet = parseSubnet(input.subnet).cidr
  const cluster = parseSubnet(input.clusterCidr).cidr
  return [
    `table ${NFT_TABLE}`,
    `delete table ${NFT_TABLE}`,
    `table ${NFT_TABLE} {`,
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    // Containers reach the LAN and the internet as the node; other nodes' containers see their real address.
    `    ip saddr ${subnet} ip daddr != ${cluster} oifname != "${BRIDGE}" masquerade`,
    '  }',
    '}',
    '',
  ].join('\n')
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
