#!/usr/bin/env bash
# Download every model the photo chain's default roles need into one folder (on a machine with
# internet access), print each folder's size, and write DIR/models.yaml pointing at them:
#   bash scripts/download_weights.sh DIR            # then: hoiguide reconstruct IMG --models DIR/models.yaml
# Needs `hf` (huggingface_hub). FLUX.1 Kontext [dev] is gated: accept its licence on the hub and
# run `hf auth login` first (or pass --no-flux to use the offline OpenCV inpainter instead).
# HaMeR and MANO cannot be fetched by script: HaMeR's checkpoint comes from its repository's
# download script, the MANO model from https://mano.is.tue.mpg.de (registration); put them in
# DIR/hamer/ and DIR/mano/ and the models.yaml below points at them.
set -euo pipefail
DIR=${1:?usage: download_weights.sh DIR [--no-flux]}
FLUX=1; [ "${2:-}" = "--no-flux" ] && FLUX=0
command -v hf >/dev/null || { echo "hf not found: pip install huggingface_hub"; exit 2; }
mkdir -p "$DIR"
get() {  # repo local-subfolder [include-pattern]
  local repo=$1 dest="$DIR/$2"; shift 2
  hf download "$repo" --local-dir "$dest" "$@"
  du -sh "$dest"
}
get IDEA-Research/grounding-dino-base grounding-dino-base
get facebook/sam-vit-base sam-vit-base
get Ruicheng/moge-2-vitl-normal moge-2-vitl-normal
get tencent/Hunyuan3D-2 Hunyuan3D-2 --include 'hunyuan3d-dit-v2-0/*' --include 'hunyuan3d-vae-v2-0/*'
if [ "$FLUX" = 1 ]; then get black-forest-labs/FLUX.1-Kontext-dev FLUX.1-Kontext-dev; fi
cat > "$DIR/models.yaml" <<YAML
segmentation: {detector: $DIR/grounding-dino-base, sam: $DIR/sam-vit-base}
inpainting: $( [ "$FLUX" = 1 ] && echo "{kind: flux_kontext, model: $DIR/FLUX.1-Kontext-dev}" || echo "{kind: opencv}")
geometry: {kind: moge, model: $DIR/moge-2-vitl-normal}
hand: {kind: hamer, checkpoint: $DIR/hamer, mano: $DIR/mano}
generator: {kind: hunyuan, model: $DIR/Hunyuan3D-2}
YAML
du -sh "$DIR"
echo "wrote $DIR/models.yaml"
