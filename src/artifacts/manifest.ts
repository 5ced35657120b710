// The manifest: the one dag-cbor block that names an artifact's files, their modes and sizes, and the chunks
// of each file in order. Its CID is the artifact's root CID. A manifest from a peer is checked as hostile
// input: relative paths only, no `..`, sizes that match the chunk counts, bounded counts.
import * as dagCbor from '@ipld/dag-cbor'
import * as z from '../common/schema.ts'
import { CHUNK_BYTES, CID, dagCborCid, MAX_BLOCK_BYTES } from './cid.ts'

export const MAX_ENTRIES = 20_000
const MAX_PATH = 1024

export interface FileEntry {
  path: string
  kind: 'file'
  mode: number
  size: number
  chunks: CID[]
}
export interface DirEntry {
  path: string
  kind: 'dir'
  mode: number
}
export interface SymlinkEntry {
  path: string
  kind: 'symlink'
  target: string
}
export type ManifestEntry = FileEntry | DirEntry | SymlinkEntry

export interface Manifest {
  v: 1
  /** `file` for a single file (its one entry is its name), `dir` for a tree. */
  kind: 'file' | 'dir'
  /** The architecture it was pushed for, or `any`. */
  arch: string
  entries: ManifestEntry[]
}

const Path = z.string().check(
  z.minLength(1),
  z.maxLength(MAX_PATH),
  z.refine((p) => !p.startsWith('/') && p.split('/').every((s) => s !== '' && s !== '.' && s !== '..')),
)
const Mode = z.number().check(z.int(), z.minimum(0), z.maximum(0o7777))
const Link = z.custom<CID>((v) => CID.asCID(v) !== null)
const FileEntrySchema = z.strictObject({
  path: Path,
  kind: z.literal('file'),
  mode: Mode,
  size: z.number().check(z.int(), z.minimum(0)),
  chunks: z.array(Link).check(z.maxLength(MAX_BLOCK_BYTES / 32)),
})
const ManifestSchema = z.strictObject({
  v: z.literal(1),
  kind: z.enum(['file', 'dir']),
  arch: z.string().check(z.regex(/^[a-z0-9]{1,16}$/)),
  entries: z
    .array(
      z.discriminatedUnion('kind', [
        FileEntrySchema,
        z.strictObject({ path: Path, kind: z.literal('dir'), mode: Mode }),
        z.strictObject({
          path: Path,
          kind: z.literal('symlink'),
          target: z.string().check(z.maxLength(MAX_PATH)),
        }),
      ]),
    )
    .check(z.maxLength(MAX_ENTRIES)),
})

export function encodeManifest(m: Manifest): { cid: CID; bytes: Uint8Array } {
  const bytes = dagCbor.encode(m)
  if (bytes.length > MAX_BLOCK_BYTES)
    throw new RangeError(`a manifest of ${bytes.length} bytes is larger than one block`)
  return { cid: dagCborCid(bytes), bytes }
}

/** A manifest from bytes already verified against their CID, or undefined when it is not a valid one. */
export function decodeManifest(bytes: Uint8Array): Manifest | undefined {
  let value: unknown
  try {
    value = dagCbor.decode(bytes)
  } catch {
    return undefined
  }
  const parsed = ManifestSchema.safeParse(value)
  if (!parsed.success) return undefined
  const m = parsed.data as Manifest
  const seen = new Set<string>()
  // No entry may lie under a file or a symlink: a symlink `a` → /etc and a file `a/passwd` would otherwise
  // write through the link when the artifact is checked out.
  const leaves = new Set(m.entries.filter((e) => e.kind !== 'dir').map((e) => e.path))
  for (const e of m.entries) {
    const parts = e.path.split('/')
    for (let i = 1; i < parts.length; i++) if (leaves.has(parts.slice(0, i).join('/'))) return undefined
    if (seen.has(e.path)) return undefined
    seen.add(e.path)
    if (e.kind === 'file' && !sizeFits(e.size, e.chunks.length)) return undefined
  }
  if (m.kind === 'file' && (m.entries.length !== 1 || m.entries[0]?.kind !== 'file')) return undefined
  return m
}

function sizeFits(size: number, chunks: number): boolean {
  return size <= chunks * CHUNK_BYTES && (chunks === 0 ? size === 0 : size > (chunks - 1) * CHUNK_BYTES)
}

/** The artifact's bytes: the sum of its files' sizes. */
export function manifestSize(m: Manifest): number {
  let size = 0
  for (const e of m.entries) if (e.kind === 'file') size += e.size
  return size
}

/** Every chunk the manifest names, once each, in first-use order. */
export function uniqueChunks(m: Manifest): CID[] {
  const seen = new Set<string>()
  const out: CID[] = []
  for (const e of m.entries) {
    if (e.kind !== 'file') continue
    for (const c of e.chunks) {
      const key = c.toString()
      if (seen.has(key)) continue
      seen.add(key)
      out.push(c)
    }
  }
  return out
}
