// The node's persistent Ed25519 key (its libp2p peer id) and the cluster's pre-shared key, both files
// in the data directory, readable by root only.
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { Km1sError } from '../common/errors.ts'
import { writeFileAtomic } from '../common/files.ts'

export const CLUSTER_SECRET_BYTES = 32

async function readIfExists(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Loads the node key, creating it on first use. */
export async function loadOrCreateIdentity(path: string): Promise<PrivateKey> {
  const existing = await readIfExists(path)
  if (existing) {
    try {
      return privateKeyFromProtobuf(existing)
    } catch (cause) {
      throw new Km1sError(
        'ERR_IDENTITY_CORRUPT',
        `The node key ${path} is damaged; restore it from a backup or remove it to give this node a new identity.`,
        { cause },
      )
    }
  }
  const key = await generateKeyPair('Ed25519')
  await writeFileAtomic(path, privateKeyToProtobuf(key))
  return key
}

export function generateClusterSecret(): Uint8Array {
  return new Uint8Array(randomBytes(CLUSTER_SECRET_BYTES))
}

/** A short public name for the cluster, derived from the secret (safe to show and to announce). */
export function clusterId(secret: Uint8Array): string {
  return createHash('sha256').update('km1s cluster id\n').update(secret).digest('hex').slice(0, 12)
}

export async function readClusterSecret(path: string): Promise<Uint8Array | undefined> {
  const raw = await readIfExists(path)
  if (!raw) return undefined
  const secret = new Uint8Array(raw)
  if (secret.length !== CLUSTER_SECRET_BYTES) {
    throw new Km1sError(
      'ERR_CLUSTER_KEY_CORRUPT',
      `The cluster key ${path} is damaged; run 'km1s join TOKEN' with a token from another node to restore it.`,
    )
  }
  return secret
}

export async function writeClusterSecret(path: string, secret: Uint8Array): Promise<void> {
  await writeFileAtomic(path, secret)
}
