// Reading what a user pushes: a regular file or a directory tree, walked in sorted order (the same tree
// always gives the same manifest, so the same root CID). Sockets, FIFOs and devices are refused by name.
import type { Stats } from 'node:fs'
import { lstat, open, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Km1sError } from '../common/errors.ts'
import { CHUNK_BYTES } from './cid.ts'
import { MAX_ENTRIES } from './manifest.ts'

export type TreeItem =
  | { kind: 'file'; path: string; abs: string; mode: number; size: number }
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'symlink'; path: string; target: string }

function special(s: Stats): string | undefined {
  if (s.isSocket()) return 'a socket'
  if (s.isFIFO()) return 'a FIFO'
  if (s.isCharacterDevice()) return 'a character device'
  if (s.isBlockDevice()) return 'a block device'
  return undefined
}

export function refuseSpecial(path: string, s: Stats): void {
  const what = special(s)
  if (what)
    throw new Km1sError(
      'ERR_ARTIFACT_PATH',
      `${path} is ${what}; km1s push takes a regular file or a directory.`,
    )
}

/** Every entry under `root` (relative paths, sorted), refusing special files anywhere in the tree. */
export async function walkTree(root: string): Promise<TreeItem[]> {
  const out: TreeItem[] = []
  const walk = async (abs: string, rel: string): Promise<void> => {
    const names = (await readdir(abs)).sort()
    for (const name of names) {
      const childAbs = join(abs, name)
      const childRel = rel ? `${rel}/${name}` : name
      const s = await lstat(childAbs)
      refuseSpecial(childAbs, s)
      if (out.length >= MAX_ENTRIES)
        throw new Km1sError(
          'ERR_ARTIFACT_PATH',
          `${root} holds more than ${MAX_ENTRIES} entries; push a smaller tree.`,
        )
      if (s.isSymbolicLink()) out.push({ kind: 'symlink', path: childRel, target: await readlink(childAbs) })
      else if (s.isDirectory()) {
        out.push({ kind: 'dir', path: childRel, mode: s.mode & 0o7777 })
        await walk(childAbs, childRel)
      } else out.push({ kind: 'file', path: childRel, abs: childAbs, mode: s.mode & 0o7777, size: s.size })
    }
  }
  await walk(root, '')
  return out
}

/** A file's chunks of CHUNK_BYTES (the last one shorter), read one at a time: memory stays at one chunk. */
export async function* readChunks(path: string): AsyncGenerator<Uint8Array> {
  const fh = await open(path, 'r')
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(CHUNK_BYTES)
      let filled = 0
      while (filled < CHUNK_BYTES) {
        const { bytesRead } = await fh.read(buf, filled, CHUNK_BYTES - filled, null)
        if (bytesRead === 0) break
        filled += bytesRead
      }
      if (filled === 0) return
      yield buf.subarray(0, filled)
      if (filled < CHUNK_BYTES) return
    }
  } finally {
    await fh.close()
  }
}
