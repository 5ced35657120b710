// Writing a small file so that a crash or a power cut leaves either the old content or the new, never a
// torn one (half a key, half a container record): a temporary file, fsync'd, then renamed over the target.
// A missing directory is made 0711: others may pass through to the API socket (0660, group km1s) but not
// list it; the files themselves default to 0600.
import { mkdir, open, rename } from 'node:fs/promises'
import { dirname } from 'node:path'

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o711 })
  const tmp = `${path}.tmp-${process.pid}`
  const fh = await open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
}
