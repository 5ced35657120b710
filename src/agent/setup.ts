// What `km1s init`, `km1s join` and `km1s token` do to a data directory, and how a first start consumes
// a token file from the boot partition ("plug a Pi in and it joins").
import { readFile, rm } from 'node:fs/promises'
import { hostname } from 'node:os'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Level } from 'level'
import { Km1sError } from '../common/errors.ts'
import { writeFileAtomic } from '../common/files.ts'
import { dataPaths } from '../common/paths.ts'
import * as z from '../common/schema.ts'
import { writeClusterSecret } from '../mesh/identity.ts'
import {
  decodeToken,
  encodeToken,
  generateClusterSecret,
  loadOrCreateIdentity,
  readClusterSecret,
} from '../mesh/index.ts'

const NodeName = z
  .string()
  .check(
    z.regex(
      /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/,
      'a node name is 1-63 lowercase letters, digits or dashes, like pi-a',
    ),
  )
const NodeFile = z.object({ name: NodeName })

export function validateNodeName(name: string): string {
  const parsed = NodeName.safeParse(name)
  if (!parsed.success)
    throw new Km1sError('ERR_INVALID', `Invalid node name '${name}': ${parsed.error.issues[0]?.message}.`)
  return parsed.data
}

/** The host name made into a valid node name. */
export function defaultNodeName(host = hostname()): string {
  const cleaned = host
    .toLowerCase()
    .split('.')[0]
    ?.replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
  return cleaned || 'node'
}

async function nodeFile(dir: string): Promise<string> {
  return `${dir}/node.json`
}

export async function readNodeName(dir: string): Promise<string | undefined> {
  try {
    const parsed = NodeFile.safeParse(JSON.parse(await readFile(await nodeFile(dir), 'utf8')))
    return parsed.success ? parsed.data.name : undefined
  } catch {
    return undefined
  }
}

export async function writeNodeName(dir: string, name: string): Promise<void> {
  await writeFileAtomic(await nodeFile(dir), `${JSON.stringify({ name: validateNodeName(name) })}\n`, 0o644)
}

export interface ClusterSetup {
  name: string
  peerId: string
  token: string
  created: boolean
}

async function finish(
  dir: string,
  secret: Uint8Array,
  name: string | undefined,
  created: boolean,
): Promise<ClusterSetup> {
  const paths = dataPaths(dir)
  const key = await loadOrCreateIdentity(paths.identity)
  const nodeName = name ? validateNodeName(name) : ((await readNodeName(dir)) ?? defaultNodeName())
  await writeNodeName(dir, nodeName)
  return { name: nodeName, peerId: peerIdFromPrivateKey(key).toString(), token: encodeToken(secret), created }
}

/** Creates the identity and a new cluster, or reports the existing one (init is idempotent). */
export async function initCluster(dir: string, opts: { name?: string } = {}): Promise<ClusterSetup> {
  const paths = dataPaths(dir)
  if (opts.name) validateNodeName(opts.name)
  const existing = await readClusterSecret(paths.clusterKey)
  if (existing) return finish(dir, existing, opts.name, false)
  const secret = generateClusterSecret()
  await writeClusterSecret(paths.clusterKey, secret)
  return finish(dir, secret, opts.name, true)
}

/** Stores a cluster's secret for this data directory. Refuses to silently move a node to another cluster. */
export async function joinCluster(
  dir: string,
  token: string,
  opts: { name?: string; force?: boolean } = {},
): Promise<ClusterSetup> {
  const { secret } = decodeToken(token)
  if (opts.name) validateNodeName(opts.name)
  const paths = dataPaths(dir)
  const existing = await readClusterSecret(paths.clusterKey)
  if (existing && !opts.force && Buffer.compare(existing, secret) !== 0) {
    throw new Km1sError(
      'ERR_OTHER_CLUSTER',
      `This data directory (${dir}) already belongs to another cluster; use another --data-dir, or pass --force to move this node.`,
    )
  }
  if (existing && Buffer.compare(existing, secret) !== 0) await forgetOldCluster(paths.database)
  await writeClusterSecret(paths.clusterKey, secret)
  return finish(dir, secret, opts.name, false)
}

/** LevelDB refused to open because another process holds its lock (an agent). */
export function isDatabaseLocked(err: unknown): boolean {
  return (err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED'
}

/**
 * A node moving to another cluster starts with an empty database: the old cluster's records and peers
 * must not spill into the new one. Refused while an agent holds the database.
 */
async function forgetOldCluster(database: string): Promise<void> {
  const db = new Level(database)
  try {
    await db.open({ createIfMissing: false })
  } catch (err) {
    if (isDatabaseLocked(err)) {
      throw new Km1sError(
        'ERR_AGENT_RUNNING',
        'A km1s agent is running on this data directory; stop it before moving the node to another cluster.',
      )
    }
    // No database yet: nothing to forget.
    return
  }
  await db.close()
  await rm(database, { recursive: true, force: true })
}

export async function readJoinToken(dir: string): Promise<string> {
  const secret = await readClusterSecret(dataPaths(dir).clusterKey)
  if (!secret) {
    throw new Km1sError(
      'ERR_NO_CLUSTER',
      `${dir} has no cluster yet; run 'km1s init' to create one or 'km1s join TOKEN' to join one.`,
    )
  }
  return encodeToken(secret)
}

/**
 * At first start: join with the token file on the boot partition, then remove it so the secret lives only
 * in the data directory. Returns true when a token was consumed.
 */
export async function consumeTokenFile(dir: string, tokenFile: string): Promise<boolean> {
  if (await readClusterSecret(dataPaths(dir).clusterKey)) return false
  let text: string
  try {
    text = await readFile(tokenFile, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw new Km1sError(
      'ERR_TOKEN_FILE',
      `Cannot read the token file ${tokenFile}: ${(err as Error).message}.`,
      { cause: err },
    )
  }
  await joinCluster(dir, text)
  await rm(tokenFile, { force: true })
  return true
}
